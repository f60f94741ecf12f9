"""What each DAG task would send, rendered by Airflow itself (in .venv-airflow) for real params.

The Beam tasks' command lines are built by the Beam provider's own code (``dataflow_config``
applied, then its option formatting), so these are the flags the stage's ``python -m`` receives.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_dag import REPO, _airflow

BEAM = {  # task -> the `vsearch` command it runs (`python -m vsearch STAGE ...`)
    "preprocess": "preprocess",
    "embed_full": "embed",
    "embed_incremental": "embed",
    "build_index": "build-index",
}
PYTHON_TASKS = ("train", "gate", "promoted", "publish")
DAY = {"catalog": "gs://b/catalog", "workdir": "gs://b/vs"}
DATAFLOW = {
    **DAY,
    "runner": "DataflowRunner",
    "gcp_project": "my-project",
    "gcp_region": "europe-west4",
    "beam_options": {
        "temp_location": "gs://b/tmp",
        "requirements_file": "deploy/requirements-worker.txt",
        "experiments": ["use_runner_v2"],
        "region": "us-east1",  # ignored: the provider sets --region from dataflow_config
        "setup_file": "/opt/vs/pyproject.toml",
        "machine_type": "n1-standard-4",
    },
    # GPU workers for embedding only; the image holds the code, so no setup/requirements file.
    "embed_beam_options": {
        "machine_type": "n1-standard-8",
        "dataflow_service_options": [
            "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
        ],
        "sdk_container_image": "us-docker.pkg.dev/p/r/vsearch-worker-gpu:abc123",
        "setup_file": None,
        "requirements_file": None,
        "large-model": True,  # the embed stage's own flags travel the same way
        "max-batch-size": 64,
    },
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    cases = [
        [DAY, "2026-01-02"],  # 0: DirectRunner, scheduled run
        [DATAFLOW, "2026-01-02"],  # 1: DataflowRunner
        [{**DATAFLOW, "gcp_project": ""}, "2026-01-02"],  # 2: Dataflow without a project
        [DAY, None],  # 3: triggered without a logical date and without a date param
        [{**DAY, "date": "2026-03-04"}, None],  # 4: ... with a date param
        [{**DATAFLOW, "date": "2026-03-04"}, "2026-01-02"],  # 5: date param beats logical date
    ]
    out = _airflow(
        tmp_path_factory.mktemp("af"), str(REPO / "tests" / "dag_render.py"), json.dumps(cases)
    )
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and len(lines) == len(cases), out.stdout[-3000:] + out.stderr[-3000:]
    return lines


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in argv[3:])


def test_direct_runner_tasks_send_the_day_and_no_dataflow_options(rendered) -> None:
    tasks = rendered[0]
    for task_id, module in BEAM.items():
        argv = tasks[task_id]["argv"]
        assert argv[:4] == ["-m", "vsearch", module, "--runner=DirectRunner"], argv
        flags = _flags(argv)
        assert flags["catalog"] == "gs://b/catalog" and flags["workdir"] == "gs://b/vs"
        assert flags["date"] == "2026-01-02"
        assert not {"project", "region", "job_name", "temp_location"} & flags.keys()
        assert ("full" in flags) == (task_id == "embed_full")
        assert tasks[task_id]["pool"] == "vsearch_beam" and tasks[task_id]["timeout_s"] > 0
    for task_id in PYTHON_TASKS:
        assert tasks[task_id]["kwargs"]["date"] == "2026-01-02"
        assert tasks[task_id]["timeout_s"] > 0
    assert tasks["train"]["timeout_s"] > tasks["gate"]["timeout_s"]


def test_dataflow_runner_tasks_send_project_region_job_name_and_beam_options(rendered) -> None:
    tasks = rendered[1]
    for task_id, module in BEAM.items():
        task = tasks[task_id]
        assert task["is_dataflow"] is True
        argv = task["argv"]
        assert argv[:4] == ["-m", "vsearch", module, "--runner=DataflowRunner"], argv
        flags = _flags(argv)
        assert flags["project"] == "my-project"
        assert flags["region"] == "europe-west4"  # the param, not the provider's default
        assert argv.count("--region=europe-west4") == 1 and "--region=us-east1" not in argv
        assert flags["temp_location"] == "gs://b/tmp"
        assert flags["experiments"] == "use_runner_v2"
        assert flags["date"] == "2026-01-02"
        # One job per task and day, unique per attempt (a retry never meets its own old name).
        stem = f"vsearch-{task_id.replace('_', '-')}-20260102-"
        assert flags["job_name"] == task["job_name"] and task["job_name"].startswith(stem)
        assert len(task["job_name"]) == len(stem) + 8
        assert task["wait_until_finished"] is True and task["drain_pipeline"] is False
        assert task["cancel_timeout"] == 600
        assert task["gcp_conn_id"] == "google_cloud_default"
        gpu = task_id.startswith("embed")
        assert flags["machine_type"] == ("n1-standard-8" if gpu else "n1-standard-4")
        assert ("sdk_container_image" in flags) == gpu
        assert ("dataflow_service_options" in flags) == gpu
        if gpu:  # null in embed_beam_options removed them: the image holds code and pins
            assert not {"setup_file", "requirements_file"} & flags.keys()
        else:
            assert flags["requirements_file"] == "deploy/requirements-worker.txt"
            assert flags["setup_file"] == "/opt/vs/pyproject.toml"
        assert argv.count("--machine_type=n1-standard-8") <= 1
        assert ("large-model" in flags) == gpu and flags.get("max-batch-size", "64") == "64"
    assert (
        "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;"
        "install-nvidia-driver" in tasks["embed_full"]["argv"]
    )


def test_dataflow_without_a_project_fails_naming_the_param(rendered) -> None:
    for task_id in BEAM:
        assert "gcp_project" in rendered[2][task_id]["error"]


def test_a_run_without_a_logical_date_fails_clearly_unless_given_a_date(rendered) -> None:
    for task_id in [*BEAM, *PYTHON_TASKS]:
        error = rendered[3][task_id]["error"]
        assert "no logical date" in error and '--conf \'{"date": ' in error, error
    for task_id in BEAM:
        assert "--date=2026-03-04" in rendered[4][task_id]["argv"]
        assert "--date=2026-03-04" in rendered[5][task_id]["argv"]
    for task_id in PYTHON_TASKS:
        assert rendered[4][task_id]["kwargs"]["date"] == "2026-03-04"
    assert rendered[5]["embed_full"]["job_name"].startswith("vsearch-embed-full-20260304-")
