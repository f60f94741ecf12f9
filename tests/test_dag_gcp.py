"""The daily DAG on Google Cloud: what each task would launch, and that a killed task cancels
the Dataflow job it started.

Airflow and its Google/Beam providers run in .venv-airflow (as in test_dag.py); a local HTTP
server plays the Dataflow REST API (v1b3) for both Beam's DataflowRunner (``--dataflow_endpoint``)
and the provider's DataflowHook (its discovery client pointed at it), and the GCS emulator holds
the job's staging files. Nothing here reaches Google.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.test_dag import REPO, _airflow

GCP = {
    "project": "my-project",
    "region": "europe-west4",
    "image": "europe-west4-docker.pkg.dev/my-project/vs/vsearch:abc123",
    "gpu_image": "europe-west4-docker.pkg.dev/my-project/vs/vsearch-gpu:abc123",
    "template_path": "gs://b/templates/vsearch-abc123.json",
    "temp_location": "gs://b/tmp",
    "service_account": "vsearch-jobs@my-project.iam.gserviceaccount.com",
    "labels": {"app": "visual-search", "team": "search"},
    "bigquery_table": "my-project.vsearch.embeddings",
}
DAY = {"catalog": "gs://b/catalog", "workdir": "gs://b/vs"}


# ------------------------------------------------------------------ a fake Dataflow API


# Dataflow v1b3's JobState numbers, for requests that send the number instead of the name.
JOB_STATES = {3: "JOB_STATE_DONE", 4: "JOB_STATE_FAILED", 5: "JOB_STATE_CANCELLED"}


class FakeDataflow(ThreadingHTTPServer):
    """The Dataflow v1b3 REST calls that Beam's runner and the provider's hook make: create or
    launch a job, get it (its state), its messages and metrics, list jobs, and update its
    requestedState (cancel). Every call is recorded."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return "http://localhost" if port == 80 else f"http://{host}:{port}"

    def new_job(self, project: str, location: str, name: str) -> dict[str, Any]:
        job_id = f"2026-12-05_01_02_03-{next(self.ids):019d}"
        job = {
            "id": job_id,
            "projectId": project,
            "location": location,
            "name": name,
            "type": "JOB_TYPE_BATCH",
            "currentState": "JOB_STATE_RUNNING",
        }
        self.jobs[job_id] = job
        return job

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.calls.append((method, path, body))
            base = r"/v1b3/projects/(?P<p>[^/]+)(?:/locations/(?P<l>[^/]+))?"
            if m := re.fullmatch(base + r"/jobs", path):
                if method == "POST":
                    return 200, self.new_job(m["p"], m["l"] or "", body.get("name", ""))
                return 200, {"jobs": list(self.jobs.values())}
            if m := re.fullmatch(base + r"/flexTemplates:launch", path):
                name = body["launchParameter"]["jobName"]
                return 200, {"job": self.new_job(m["p"], m["l"], name)}
            if m := re.fullmatch(base + r"/jobs/(?P<id>[^/]+)", path):
                job = self.jobs.get(m["id"])
                if job is None:
                    return 404, {"error": {"code": 404, "message": "no such job"}}
                if method == "PUT":
                    # JSON may name an enum value or give its number (Beam's client sends 5).
                    state = JOB_STATES.get(body["requestedState"], body["requestedState"])
                    job["requestedState"] = state
                    if state == "JOB_STATE_CANCELLED":
                        job["currentState"] = "JOB_STATE_CANCELLED"
                return 200, job
            if re.fullmatch(base + r"/jobs/[^/]+/messages", path):
                return 200, {"jobMessages": []}
            if re.fullmatch(base + r"/jobs/[^/]+/metrics", path):
                return 200, {"metrics": []}
            return 404, {"error": {"code": 404, "message": f"not faked: {method} {path}"}}


class _Handler(BaseHTTPRequestHandler):
    server: FakeDataflow

    def _reply(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        status, payload = self.server.answer(method, self.path.split("?")[0], body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._reply("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._reply("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._reply("PUT")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def dataflow() -> Iterator[FakeDataflow]:
    yield from _serve(FakeDataflow())


@pytest.fixture()
def dataflow_port_80() -> Iterator[FakeDataflow]:
    """The fake as http://localhost (port 80): Beam accepts a --dataflow_endpoint only without a
    port, and talks REST (not gRPC) only to an endpoint named localhost."""
    import time

    deadline = time.monotonic() + 120
    while True:
        try:
            server = FakeDataflow("127.0.0.1", 80)
            break
        except OSError as e:  # another run holds it, or no right to port 80 here
            if time.monotonic() > deadline:
                pytest.fail(f"port 80 on 127.0.0.1 stays unavailable for the fake API: {e}")
            time.sleep(2)
    yield from _serve(server)


def _serve(server: FakeDataflow) -> Iterator[FakeDataflow]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()


# What the Airflow side runs (in .venv-airflow): build the DAG, render one task for a run as
# Airflow's task runner would, and point the provider's DataflowHook at the fake API (its
# credentials are anonymous and its endpoint is the fake's; every call it makes is real HTTP).
_SETUP = """
import copy, datetime as dt, json, sys, threading, time
from types import SimpleNamespace
import google_auth_httplib2, httplib2
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

a = json.loads(sys.argv[1])
DataflowHook._authorize = lambda self: google_auth_httplib2.AuthorizedHttp(
    AnonymousCredentials(), http=httplib2.Http())
DataflowHook.get_client_options = lambda self, api_endpoint_override=None: ClientOptions(
    api_endpoint=a["endpoint"])
bag = DagBag(dag_folder="dags")
assert not bag.import_errors, bag.import_errors
dag = bag.dags["visual_search_daily"]
task = dag.get_task(a["task"])
params = copy.deepcopy(dag.params)
for key, value in a["conf"].items():
    params[key] = value
logical = dt.datetime.fromisoformat(a["date"]).replace(tzinfo=dt.UTC)
pushed = {}
ti = SimpleNamespace(
    xcom_push=lambda key, value, **_: pushed.__setitem__(key, value),
    xcom_pull=lambda **_: None, task_id=task.task_id, dag_id=dag.dag_id, run_id="r", map_index=-1,
    try_number=1)
context = {"params": params.validate(), "dag": dag, "task": task, "ti": ti, "task_instance": ti,
           "dag_run": SimpleNamespace(logical_date=logical, conf={}, run_id="r"),
           "ds": a["date"], "logical_date": logical}
task.render_template_fields(context, jinja_env=dag.get_template_env())
"""

# The DAG's Beam task on DataflowRunner, run by the Beam provider as in production: it starts
# the real stage (`python -m vsearch preprocess ...`), reads its output for the job id with the
# Google provider's own callback, and waits for the job; meanwhile the task is killed.
_KILL_BEAM_TASK = (
    _SETUP
    + """
outcome = {}
def run():
    try:
        task.execute(context)
        outcome["returned"] = True
    except BaseException as e:
        outcome["error"] = f"{type(e).__name__}: {e}"[:3000]
worker = threading.Thread(target=run, daemon=True)
worker.start()
deadline = time.time() + 600  # the stage submits its job in well under a minute
while task.dataflow_job_id is None and worker.is_alive() and time.time() < deadline:
    time.sleep(0.5)
seen = task.dataflow_job_id
if seen:
    task.on_kill()  # what Airflow calls on a timeout or "mark failed"
worker.join(300)
print(json.dumps({"job_id": seen, "pushed": pushed, "outcome": outcome,
                  "alive": worker.is_alive()}, default=str))
"""
)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_killed_beam_task_cancels_the_dataflow_job_its_stage_created(
    dataflow_port_80: FakeDataflow,
    tiny_catalog: str,
    gcs_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "google-cloud-platform://")
    monkeypatch.delenv("VSEARCH_MODE", raising=False)  # the local mode's Beam provider task
    conf = {
        "catalog": tiny_catalog,
        # Local: the job is only described and submitted here (its staging goes to gs://).
        "workdir": str(tmp_path / "work"),
        "runner": "DataflowRunner",
        "gcp_project": "my-project",
        "gcp_region": "europe-west4",
        "beam_options": {
            "temp_location": f"{gcs_bucket}/tmp",
            "dataflow_endpoint": dataflow_port_80.url,  # Beam's runner talks to the fake API
            "no_auth": True,
            "sdk_container_image": GCP["image"],
            "sdk_location": "container",
        },
    }
    args = {
        "endpoint": dataflow_port_80.url,
        "task": "preprocess",
        "conf": conf,
        "date": "2026-01-01",
    }
    out = _airflow(tmp_path, "-c", _KILL_BEAM_TASK, json.dumps(args), timeout=1400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    created = [path for method, path, _ in dataflow_port_80.calls if method == "POST"]
    assert created == ["/v1b3/projects/my-project/locations/europe-west4/jobs"], (
        got,
        dataflow_port_80.calls,
        out.stdout[-6000:],
    )
    (job_id,) = dataflow_port_80.jobs
    # The provider found the id in the stage's own output (the job link and XCom have it) ...
    assert got["job_id"] == job_id, out.stderr[-4000:]
    assert got["pushed"].get("dataflow_job_id") == job_id
    link = got["pushed"]["dataflow_job_config"]  # what the UI's Dataflow job link reads
    assert link == {"job_id": job_id, "project_id": "my-project", "region": "europe-west4"}
    # ... so the kill cancelled exactly that job, through the provider's hook, over HTTP ...
    cancels = [(p, b) for m, p, b in dataflow_port_80.calls if m == "PUT"]
    assert cancels == [
        (
            f"/v1b3/projects/my-project/locations/europe-west4/jobs/{job_id}",
            {"requestedState": "JOB_STATE_CANCELLED"},
        )
    ]
    # ... and the task, which was waiting for its job, ends failed with the job cancelled.
    assert not got["alive"] and "JOB_STATE_CANCELLED" in got["outcome"]["error"], got


# ------------------------------------------------------------------ mode gcp: launch requests


def _gcp_airflow(tmp_path: Path, script: str, *args: str, **settings: Any) -> Any:
    import os

    env_before = dict(os.environ)
    os.environ.update(
        {
            "VSEARCH_MODE": "gcp",
            "VSEARCH_GCP": json.dumps(GCP | settings),
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": "google-cloud-platform://",
        }
    )
    try:
        out = _airflow(tmp_path, "-c", script, *args, timeout=900)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_RENDER_ALL = """
import copy, datetime as dt, json, sys
from types import SimpleNamespace
from airflow.dag_processing.dagbag import DagBag

conf, date = json.loads(sys.argv[1]), sys.argv[2]
bag = DagBag(dag_folder="dags")
assert not bag.import_errors, bag.import_errors
dag = bag.dags["visual_search_daily"]
params = copy.deepcopy(dag.params)
for key, value in conf.items():
    params[key] = value
logical = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
from airflow.timetables.base import TimeRestriction
info = dag.timetable.next_dagrun_info(
    last_automated_data_interval=None, restriction=TimeRestriction(dag.start_date, None, True))
first_run = {"logical_date": str(info.logical_date), "run_after": str(info.run_after),
             "data_interval": [str(info.data_interval.start), str(info.data_interval.end)]}
files = ["gs://b/vs/embeddings/model=v1/dt=" + date + "/part-00000-of-00001.a1.parquet"]
fields = {"DataflowStartFlexTemplateOperator": ["body", "location", "project_id", "deferrable",
              "cancel_on_kill", "drain_pipeline", "append_job_name", "gcp_conn_id"],
          "CreateCustomJobOperator": ["custom_job", "region", "project_id", "deferrable"],
          "GCSObjectsWithPrefixExistenceSensor": ["bucket", "prefix", "deferrable", "timeout"],
          "BigQueryInsertJobOperator": ["configuration", "project_id", "deferrable"]}
out = {"_dag": {"timetable": type(dag.timetable).__name__, "summary": dag.timetable.summary,
                "catchup": dag.catchup, "start_date": str(dag.start_date),
                "dagrun_timeout_s": dag.dagrun_timeout.total_seconds(),
                "on_failure_callback": bool(dag.on_failure_callback),
                "max_active_runs": dag.max_active_runs,
                "first_run": first_run}}
for task in dag.tasks:
    ti = SimpleNamespace(xcom_pull=lambda **_: files)
    context = {"params": params.validate(), "dag": dag, "task": task, "ti": ti,
               "dag_run": SimpleNamespace(logical_date=logical, conf={}),
               "ds": date, "logical_date": logical}
    task.render_template_fields(context, jinja_env=dag.get_template_env())
    kind = type(task).__name__
    row = {"type": kind, "retries": task.retries, "trigger_rule": getattr(task.trigger_rule, "value", task.trigger_rule),
           "timeout_s": task.execution_timeout.total_seconds() if task.execution_timeout else None,
           "downstream": sorted(task.downstream_task_ids)}
    row |= {f: getattr(task, f) for f in fields.get(kind, [])}
    if hasattr(task, "op_kwargs"):
        row["op_kwargs"] = task.op_kwargs
    out[task.task_id] = row
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every task of the gcp-mode DAG, rendered for the run of 2026-01-02 (the day processed),
    with the default ``beam_launch`` (flex_template: preprocess and embed launched as Flex
    Templates, each followed by the task that finishes its day)."""
    tmp = tmp_path_factory.mktemp("gcp-render")
    conf = DAY | {"train_args": "--epochs 5", "gate_args": "--margin 0.01"}
    return _gcp_airflow(tmp, _RENDER_ALL, json.dumps(conf), "2026-01-02")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def rendered_drivers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same run with ``beam_launch`` vertex_driver (preprocess and embed as build-index:
    their own process in a Vertex job that finishes the day)."""
    tmp = tmp_path_factory.mktemp("gcp-render-drivers")
    return _gcp_airflow(  # type: ignore[no-any-return]
        tmp, _RENDER_ALL, json.dumps(DAY), "2026-01-02", beam_launch="vertex_driver"
    )


def test_gcp_graph_waits_for_the_snapshot_and_runs_nothing_heavy_on_airflow(
    rendered: dict[str, Any],
) -> None:
    types = {k: v["type"] for k, v in rendered.items() if k != "_dag"}
    assert types == {
        "wait_for_catalog": "GCSObjectsWithPrefixExistenceSensor",
        "preprocess": "DataflowStartFlexTemplateOperator",
        "finish_preprocess": "CreateCustomJobOperator",
        "train": "CreateCustomJobOperator",
        "gate": "CreateCustomJobOperator",
        "promoted": "_BranchPythonDecoratedOperator",
        "embed_full": "DataflowStartFlexTemplateOperator",
        "embed_incremental": "DataflowStartFlexTemplateOperator",
        "finish_embed": "CreateCustomJobOperator",
        "build_index": "CreateCustomJobOperator",
        "publish": "CreateCustomJobOperator",
        "embedding_files": "_PythonDecoratedOperator",
        "load_embeddings": "BigQueryInsertJobOperator",
    }
    down = {k: v["downstream"] for k, v in rendered.items() if k != "_dag"}
    assert down["wait_for_catalog"] == ["preprocess"]
    # Each Flex Template launch, then the task that finishes its day, then the next stage.
    assert down["preprocess"] == ["finish_preprocess"] and down["finish_preprocess"] == ["train"]
    assert down["promoted"] == ["embed_full", "embed_incremental"]
    assert down["embed_full"] == down["embed_incremental"] == ["finish_embed"]
    assert down["finish_embed"] == ["build_index", "embedding_files"]
    assert down["build_index"] == ["publish"] and down["embedding_files"] == ["load_embeddings"]
    # Every waiting task waits in the triggerer, not in a worker slot.
    for task_id in ("wait_for_catalog", "preprocess", "finish_preprocess", "embed_full",
                    "embed_incremental", "finish_embed", "train", "gate", "build_index",
                    "publish", "load_embeddings"):  # fmt: skip
        assert rendered[task_id]["deferrable"] is True, task_id
    # The two Python tasks only read small JSON files in Airflow's environment (no pipeline).
    assert rendered["promoted"]["op_kwargs"] == {"workdir": "gs://b/vs", "date": "2026-01-02"}


def test_gcp_timetable_deadline_and_retries(rendered: dict[str, Any]) -> None:
    d = rendered["_dag"]
    assert d["timetable"] == "CronDataIntervalTimetable" and d["summary"] == "0 0 * * *"
    assert d["catchup"] is False and d["max_active_runs"] == 1
    assert d["start_date"].startswith("2026-01-01 00:00:00+00:00")
    # The first scheduled run covers [2026-01-01, 2026-01-02), starts when that day has ended,
    # and its logical date (the day its tasks get as --date) is the day it covers.
    assert d["first_run"] == {
        "logical_date": "2026-01-01 00:00:00+00:00",
        "run_after": "2026-01-02 00:00:00+00:00",
        "data_interval": ["2026-01-01 00:00:00+00:00", "2026-01-02 00:00:00+00:00"],
    }
    assert d["dagrun_timeout_s"] == 23 * 3600 and d["on_failure_callback"] is True
    retries = {k: v["retries"] for k, v in rendered.items() if k != "_dag"}
    for task_id in ("preprocess", "embed_full", "embed_incremental", "train", "build_index"):
        assert retries[task_id] <= 1, task_id  # Dataflow retries work items itself
    for task_id in ("wait_for_catalog", "gate", "publish", "promoted", "load_embeddings",
                    "finish_preprocess", "finish_embed"):  # fmt: skip
        assert retries[task_id] >= 3, task_id  # finishing a day again is harmless
    # After the embed branch: whichever embed ran (the other is skipped).
    assert rendered["finish_embed"]["trigger_rule"] == "none_failed_min_one_success"
    assert rendered["build_index"]["trigger_rule"] == "all_success"  # after finish_embed
    assert rendered["embedding_files"]["trigger_rule"] == "none_failed_min_one_success"


def test_gcp_catalog_sensor_waits_for_the_days_listings(rendered: dict[str, Any]) -> None:
    sensor = rendered["wait_for_catalog"]
    assert sensor["bucket"] == "b"
    assert sensor["prefix"] == "catalog/dt=2026-01-02/listings."  # .parquet or .jsonl
    assert 0 < sensor["timeout"] <= 23 * 3600


def _discovery_schema(name: str) -> dict[str, Any]:
    """A schema of the Dataflow API's discovery document, as google-api-python-client bundles it
    (the one the provider's hook builds its client from)."""
    (doc,) = (REPO / ".venv-airflow").glob(
        "lib/python3*/site-packages/googleapiclient/discovery_cache/documents/dataflow.v1b3.json"
    )
    return json.loads(doc.read_text())["schemas"][name]["properties"]  # type: ignore[no-any-return]


def test_gcp_flex_template_launches(rendered: dict[str, Any]) -> None:
    launch_fields = set(_discovery_schema("LaunchFlexTemplateParameter"))
    env_fields = set(_discovery_schema("FlexTemplateRuntimeEnvironment"))
    for task_id, stage in (
        ("preprocess", "preprocess"),
        ("embed_full", "embed"),
        ("embed_incremental", "embed"),
    ):
        t = rendered[task_id]
        assert (t["project_id"], t["location"]) == ("my-project", "europe-west4")
        assert t["cancel_on_kill"] is True and t["drain_pipeline"] is False
        assert t["append_job_name"] is True  # each attempt its own job name
        launch = t["body"]["launchParameter"]
        assert set(launch) <= launch_fields and set(launch["environment"]) <= env_fields, task_id
        assert launch["containerSpecGcsPath"] == GCP["template_path"]
        assert launch["jobName"] == f"vsearch-{task_id.replace('_', '-')}-20260102"
        params = launch["parameters"]
        assert params["stage"] == stage
        assert {k: params[k] for k in ("catalog", "workdir", "date")} == {
            "catalog": "gs://b/catalog",
            "workdir": "gs://b/vs",
            "date": "2026-01-02",
        }
        assert all(isinstance(v, str) for v in params.values()), params
        env = launch["environment"]
        assert env["serviceAccountEmail"] == GCP["service_account"]
        assert env["tempLocation"] == "gs://b/tmp"
        assert env["additionalUserLabels"] == GCP["labels"] | {"stage": stage}
        gpu = stage == "embed"
        assert env["sdkContainerImage"] == (GCP["gpu_image"] if gpu else GCP["image"])
        assert env["machineType"] == ("n1-standard-8" if gpu else "n1-standard-4")
        if gpu:
            assert params["dataflow_service_options"] == (
                "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
            )
        else:
            assert "dataflow_service_options" not in params
    assert rendered["embed_full"]["body"]["launchParameter"]["parameters"]["full"] == "true"
    assert "full" not in rendered["embed_incremental"]["body"]["launchParameter"]["parameters"]


def test_gcp_vertex_jobs(rendered: dict[str, Any]) -> None:
    from google.cloud.aiplatform_v1.types import CustomJob  # what the provider's hook sends

    expected = {
        # task: (machine, image, accelerator, the stage's extra flags)
        "train": ("n1-standard-8", GCP["gpu_image"], ("NVIDIA_TESLA_T4", 1), "--epochs 5"),
        "gate": ("n1-standard-4", GCP["image"], None, "--margin 0.01"),
        "build_index": ("n1-highmem-8", GCP["image"], None, ""),
        "publish": ("n1-standard-4", GCP["image"], None, ""),
    }
    for task_id, (machine, image, accelerator, flags) in expected.items():
        t = rendered[task_id]
        job = t["custom_job"]
        CustomJob(job)  # the provider's request type: fails on a misspelt field
        assert (t["project_id"], t["region"]) == ("my-project", "europe-west4")
        stage = task_id.replace("_", "-")
        assert job["display_name"] == f"vsearch-{stage}-20260102"
        assert job["labels"] == GCP["labels"] | {"stage": stage}
        spec = job["job_spec"]
        assert spec["service_account"] == GCP["service_account"]
        (pool,) = spec["worker_pool_specs"]
        assert pool["replica_count"] == 1
        assert pool["machine_spec"]["machine_type"] == machine
        got_acc = pool["machine_spec"].get("accelerator_type")
        assert (got_acc, pool["machine_spec"].get("accelerator_count")) == (
            accelerator or (None,) * 2
        )
        assert pool["container_spec"]["image_uri"] == image
        assert pool["container_spec"]["command"] == ["vsearch"]
        args = pool["container_spec"]["args"]
        assert args[:6] == [
            "backfill",
            "--catalog=gs://b/catalog",
            "--workdir=gs://b/vs",
            "--start=2026-01-02",
            "--end=2026-01-02",
            f"--stages={stage}",
        ]
        assert (f"--stage-flags={stage}={flags}" in args) == bool(flags)
        assert int(spec["scheduling"]["timeout"].rstrip("s")) == rendered[task_id]["timeout_s"]
    # build-index's driver runs its Beam jobs on Dataflow, from the same image and account.
    args = rendered["build_index"]["custom_job"]["job_spec"]["worker_pool_specs"][0][
        "container_spec"
    ]["args"]
    for flag in (
        "--runner=DataflowRunner",
        "--project=my-project",
        "--region=europe-west4",
        f"--sdk_container_image={GCP['image']}",
        f"--service_account_email={GCP['service_account']}",
        "--temp_location=gs://b/tmp",
        "--labels=stage=build-index",
        "--labels=team=search",
    ):
        assert flag in args, flag


def test_gcp_finish_tasks_run_vsearch_finish_in_a_light_vertex_job(
    rendered: dict[str, Any],
) -> None:
    """After a Flex Template launch, a light Vertex job of the CPU image runs `vsearch finish
    STAGE` for the run's day (the CLI's own parser accepts it)."""
    from google.cloud.aiplatform_v1.types import CustomJob

    from vsearch import cli

    for task_id, stage in (("finish_preprocess", "preprocess"), ("finish_embed", "embed")):
        t = rendered[task_id]
        assert t["type"] == "CreateCustomJobOperator" and t["deferrable"] is True
        job = t["custom_job"]
        CustomJob(job)
        assert (t["project_id"], t["region"]) == ("my-project", "europe-west4")
        assert job["display_name"] == f"vsearch-{task_id.replace('_', '-')}-20260102"
        assert job["labels"] == GCP["labels"] | {"stage": task_id.replace("_", "-")}
        spec = job["job_spec"]
        assert spec["service_account"] == GCP["service_account"]
        (pool,) = spec["worker_pool_specs"]
        assert pool["machine_spec"] == {"machine_type": "n1-standard-4"}  # light, no GPU
        assert pool["container_spec"]["image_uri"] == GCP["image"]
        assert pool["container_spec"]["command"] == ["vsearch"]
        args = pool["container_spec"]["args"]
        assert args == ["finish", stage, "--workdir=gs://b/vs", "--date=2026-01-02"]
        settings, _, _ = cli.command_line(args[0]).parse(args[1:])
        assert (settings.stage, settings.workdir, str(settings.date)) == (
            stage,
            "gs://b/vs",
            "2026-01-02",
        )
        # No --model: embed's finish is the published model's job, production's day (the
        # embed tasks launch it without --model too), never a candidate's launched that day.
        assert settings.model is None
        assert int(spec["scheduling"]["timeout"].rstrip("s")) == t["timeout_s"]


def test_gcp_vertex_args_parse_as_the_cli_would(rendered: dict[str, Any]) -> None:
    """What a Vertex job runs is a command line `vsearch` accepts (parsed by the CLI itself)."""
    from vsearch import cli

    for task_id in ("train", "gate", "build_index", "publish"):
        pool = rendered[task_id]["custom_job"]["job_spec"]["worker_pool_specs"][0]
        command, *args = pool["container_spec"]["args"]
        settings, pipeline_args, _ = cli.command_line(command).parse(args)
        assert settings.stages == (task_id.replace("_", "-"),)
        assert str(settings.start) == str(settings.end) == "2026-01-02"
        if task_id == "build_index":
            assert "--runner=DataflowRunner" in pipeline_args


@pytest.mark.parametrize(
    "task_id",
    [
        "preprocess",
        "embed_incremental",
        "embed_full",
    ],
)
def test_gcp_flex_parameters_parse_as_the_stage_flags(
    rendered: dict[str, Any], task_id: str
) -> None:
    """The template's parameters, as the launcher passes them (--name=value) through
    deploy/flex_launch.py, are flags the stage's own parser accepts."""
    from deploy.flex_launch import to_cli_args
    from vsearch import cli

    params = rendered[task_id]["body"]["launchParameter"]["parameters"]
    command, *args = to_cli_args([f"--{k}={v}" for k, v in params.items()])
    settings, pipeline_args, _ = cli.command_line(command).parse(args)
    assert str(settings.date) == "2026-01-02" and settings.workdir == "gs://b/vs"
    if task_id.startswith("embed_"):  # the branch's switch arrives as --full=true|false
        assert settings.full is (task_id == "embed_full")


def test_gcp_loads_only_committed_files_into_the_days_partition(rendered: dict[str, Any]) -> None:
    load = rendered["load_embeddings"]
    config = load["configuration"]
    assert load["project_id"] == "my-project"
    assert config["load"] == {
        # exactly the files embedding_files read from the partition's _manifest.json
        "sourceUris": [
            "gs://b/vs/embeddings/model=v1/dt=2026-01-02/part-00000-of-00001.a1.parquet"
        ],
        "sourceFormat": "PARQUET",
        "parquetOptions": {"enableListInference": True},
        "destinationTable": {
            "projectId": "my-project",
            "datasetId": "vsearch",
            "tableId": "embeddings$20260102",  # the day's partition, replaced as a whole
        },
        "writeDisposition": "WRITE_TRUNCATE",
        "createDisposition": "CREATE_IF_NEEDED",
        "timePartitioning": {"type": "DAY"},
    }
    assert config["labels"] == GCP["labels"] | {"stage": "load-embeddings"}
    assert rendered["embedding_files"]["op_kwargs"] == {
        "workdir": "gs://b/vs",
        "date": "2026-01-02",
    }


# A Flex Template task launched and then killed before its trigger took over: the provider's
# operator cancels the job its launch created.
_KILL_FLEX_TASK = (
    _SETUP
    + """
from airflow.sdk.exceptions import TaskDeferred
deferred, trigger, cancel_on_kill = False, None, None
try:
    task.execute(context)
except TaskDeferred as d:
    deferred = True
    trigger = type(d.trigger).__name__
    cancel_on_kill = d.trigger.serialize()[1].get("cancel_on_kill")
task.on_kill()
print(json.dumps({"deferred": deferred, "trigger": trigger, "cancel_on_kill": cancel_on_kill,
                  "job": task.job, "pushed": pushed}, default=str))
"""
)


@pytest.mark.timeout(900)
def test_a_killed_flex_template_task_cancels_its_job(
    dataflow: FakeDataflow, tmp_path: Path
) -> None:
    args = {"endpoint": dataflow.url, "task": "embed_full", "conf": DAY, "date": "2026-01-02"}
    got = _gcp_airflow(tmp_path, _KILL_FLEX_TASK, json.dumps(args), beam_launch="flex_template")
    launches = [(p, b) for m, p, b in dataflow.calls if m == "POST"]
    assert len(launches) == 1
    path, body = launches[0]
    assert path == "/v1b3/projects/my-project/locations/europe-west4/flexTemplates:launch"
    # the operator appends a per-attempt suffix to the job name
    assert re.fullmatch(
        r"vsearch-embed-full-20260102-[0-9a-f]{8}", body["launchParameter"]["jobName"]
    )
    assert body["launchParameter"]["parameters"]["stage"] == "embed"
    (job_id,) = dataflow.jobs
    assert got["deferred"] is True and got["trigger"] == "TemplateJobStartTrigger"
    assert got["cancel_on_kill"] is True  # a kill while deferred cancels through the trigger
    cancels = [(p, b) for m, p, b in dataflow.calls if m == "PUT"]
    assert cancels == [
        (
            f"/v1b3/projects/my-project/locations/europe-west4/jobs/{job_id}",
            {"requestedState": "JOB_STATE_CANCELLED"},
        )
    ]
    assert dataflow.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLED"


def test_local_mode_is_unchanged_without_gcp_settings() -> None:
    """The default mode needs no GCP settings and keeps the Beam provider tasks (test_dag.py
    checks its graph); a gcp mode without settings fails at parse time with what is missing."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'dags'); import vsearch_gcp, json; "
        "print(vsearch_gcp.mode()); "
        "vsearch_gcp.GcpSettings.from_json(json.dumps({'project': 'p', 'image': 'i'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.stdout.strip() == "local"
    assert "VSEARCH_GCP needs temp_location, service_account" in out.stderr


def test_gcp_vertex_drivers_for_preprocess_and_embed(rendered_drivers: dict[str, Any]) -> None:
    """beam_launch vertex_driver: preprocess and embed run their own process in a Vertex job
    (which finishes the day: no finish task) and their Beam jobs on Dataflow; embed's workers
    get the GPU."""
    from google.cloud.aiplatform_v1.types import CustomJob

    from vsearch import cli

    assert not any(t.startswith("finish_") for t in rendered_drivers)
    down = {k: v["downstream"] for k, v in rendered_drivers.items() if k != "_dag"}
    assert down["preprocess"] == ["train"]
    assert down["embed_full"] == ["build_index", "embedding_files"]

    for task_id in ("preprocess", "embed_full", "embed_incremental"):
        t = rendered_drivers[task_id]
        assert t["type"] == "CreateCustomJobOperator" and t["deferrable"] is True
        assert t["retries"] <= 1
        CustomJob(t["custom_job"])
        pool = t["custom_job"]["job_spec"]["worker_pool_specs"][0]
        assert pool["container_spec"]["image_uri"] == GCP["image"]  # the driver: CPU
        assert "accelerator_type" not in pool["machine_spec"]
        command, *args = pool["container_spec"]["args"]
        settings, pipeline_args, _ = cli.command_line(command).parse(args)
        stage = "embed" if task_id.startswith("embed") else task_id
        assert settings.stages == (stage,) and str(settings.start) == "2026-01-02"
        assert settings.full == (task_id == "embed_full")
        assert "--runner=DataflowRunner" in pipeline_args
        assert f"--job_name=vsearch-{task_id.replace('_', '-')}-20260102" in pipeline_args
        gpu = stage == "embed"
        image = GCP["gpu_image"] if gpu else GCP["image"]
        assert f"--sdk_container_image={image}" in pipeline_args
        assert ("--machine_type=n1-standard-8" if gpu else "--machine_type=n1-standard-4") in (
            pipeline_args
        )
        accel = "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;"
        assert any(a.startswith(accel) for a in pipeline_args) == gpu


def test_composer_dags_folder_parses_with_only_the_files_deploy_md_copies(tmp_path: Path) -> None:
    """On Composer nothing of the project is installed: the DAG folder holds the DAG files and
    the stage registry (docs/deploy.md), and the DAG parses from that alone, its tasks the
    registry's daily stages."""
    import os
    import shutil
    import subprocess

    from tests.test_dag import AIRFLOW_PYTHON
    from vsearch import registry

    folder = tmp_path / "dags"
    (folder / "vsearch").mkdir(parents=True)
    for name in ("visual_search_daily.py", "vsearch_gcp.py", "vsearch_gcp_tasks.py"):
        shutil.copy(REPO / "dags" / name, folder / name)
    shutil.copy(REPO / "dags" / ".airflowignore", folder / ".airflowignore")
    for name in ("__init__.py", "registry.py"):
        shutil.copy(REPO / "vsearch" / name, folder / "vsearch" / name)
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(folder)!r})\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "                  'dags': sorted(bag.dags),\n"
        "                  'tasks': sorted(bag.dags['visual_search_daily'].task_ids)\n"
        "                  if 'visual_search_daily' in bag.dags else []}))\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
        "VSEARCH_MODE": "gcp",
        "VSEARCH_GCP": json.dumps(GCP),
    }
    out = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", code],
        env=env,
        cwd=tmp_path,  # not the checkout: nothing of the project is importable but the copies
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["errors"] == {} and found["dags"] == ["visual_search_daily"], found
    stage_tasks = {registry.STAGES[n].task_id for n in registry.DAILY_STAGES} - {"embed"}
    assert stage_tasks | {registry.EMBED_FULL_TASK, registry.EMBED_INCREMENTAL_TASK} <= set(
        found["tasks"]
    )
