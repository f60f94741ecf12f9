"""Daily visual-search DAG: wiring only; every task calls a stage of the ``vsearch`` package.

preprocess -> train -> gate -> (promoted: embed --full | not promoted: incremental embed)
-> build-index (validates recall; fails rather than write a bad index) -> publish.

Settings come from one place, the DAG params below (defaults from environment variables so a
deployment sets them once; override per run with ``airflow dags trigger --conf``). Every task
processes the run's date (``params.date`` if given, else the logical date), and every stage is
idempotent for its date, so clearing and re-running a day is safe. A run triggered without a
logical date must pass ``{"date": "YYYY-MM-DD"}`` in its conf; otherwise its first task fails
with a message saying so.

Two modes, a deployment setting (``VSEARCH_MODE``, read when the file is parsed: the modes use
different operators). "local" (the default, below): stages run from this machine's pipeline
environment. "gcp" (Cloud Composer; docs/deploy.md, "Cloud Composer"): the run for day D starts
when D has ended (a pinned data-interval timetable) and processes D; it waits in the triggerer
for D's catalog snapshot, launches preprocess and embed as Dataflow Flex Templates of the
project's image, each followed by a light task that finishes the day from the job's files
(``vsearch finish``; or their drivers in Vertex jobs, see ``GcpSettings.beam_launch``), runs
every other stage as a Vertex AI job from the image, all deferrable, and loads the day's
committed embeddings into BigQuery when a table is set. Its settings are one
dataclass, ``vsearch_gcp.GcpSettings`` (``VSEARCH_GCP``). Both modes: a run fails past 23 hours
(``dagrun_timeout``) and a failed run logs one ERROR line (``on_failure_callback``).

In local mode, Beam stages run through the Apache Beam provider with the runner and pipeline
options from params: DirectRunner by default. On DataflowRunner the stage prints Beam's
"Created job with id: [...]" line (vsearch/quiet.py lets it through), where the provider
finds the job: a killed task cancels it and the task links to it. With ``runner=DataflowRunner`` the provider's
``dataflow_config`` (project, region, job name, wait and cancel behaviour) is built from the
params too, so the provider never substitutes its own defaults (it sets ``--region`` from
``dataflow_config``, overriding any ``region`` in ``beam_options``). Beam stages share the
``vsearch_beam`` pool (create it once: ``airflow pools set vsearch_beam 2 "visual-search Beam
stages"``), and every task has a timeout. See docs/scale.md for Dataflow with GPU workers and docs/deploy.md for
running train/gate off the Airflow worker.

Human evaluation before a model ships (docs/evaluation.md; nothing here changes by
default). A team that wants people to approve every new model plugs it in one of two ways:

1. The gate waits for ratings. Set ``gate_args`` to ``--require-human-eval``: the gate then
   refuses to promote until a blind side-by-side of the candidate against the published model
   has been rated and reported (``vsearch embed --model CANDIDATE --full``, ``vsearch eval-sample
   --model CANDIDATE --against PUBLISHED``, ``vsearch rate``, ``vsearch eval-report``) and the
   candidate does not lose it significantly. Until then each day's run keeps the published model
   (incremental embed); the day the report exists, clearing that day's gate task promotes.
2. Promotion becomes a manual step. Keep the automatic gate out of the path (e.g. a very high
   ``--margin``) and promote by hand after rating: ``vsearch gate --candidate V
   --require-human-eval`` run by a person, then clear the next day's run (which re-embeds with
   ``--full`` because the gate promoted).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The helper modules beside this file (the DAG processor puts the DAGs folder on sys.path; a
# DagBag built elsewhere, as in the tests, may not).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

# The stage registry (vsearch/registry.py, standard library only), which the CLI and a backfill
# use too: beside the DAG files in a deployment (docs/deploy.md), else in this checkout.
try:
    from vsearch import registry
except ImportError:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from vsearch import registry

import vsearch_gcp  # noqa: E402
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator  # noqa: E402
from airflow.sdk import DAG, Param, task  # noqa: E402
from airflow.timetables.interval import CronDataIntervalTimetable  # noqa: E402

# "local" (the default: stages run here, Beam through the Beam provider) or "gcp" (Dataflow Flex
# Templates and Vertex AI jobs from the project's image; settings in VSEARCH_GCP): see
# dags/vsearch_gcp.py and docs/deploy.md, "Cloud Composer".
MODE = vsearch_gcp.mode()
GCP = vsearch_gcp.GcpSettings.from_env() if MODE == "gcp" else None

# The pipeline's own environment (TensorFlow, TFT, Beam, faiss): Airflow runs the stages there,
# never in its own environment (see pyproject.toml for why the two are apart).
PIPELINE_PYTHON = os.environ.get(
    "VSEARCH_PYTHON", str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python")
)

# Beam stages take a slot in this pool: a backfill or a cleared range cannot start more Beam jobs
# (each a DirectRunner on this machine, or a Dataflow job with its quota) than the pool allows.
BEAM_POOL = os.environ.get("VSEARCH_BEAM_POOL", "vsearch_beam")

# Hard limits per task (Airflow kills the task and, on Dataflow, cancels the job): a hung stage
# fails and retries instead of holding the day. Sized well above the 100M-listing plan's runs.
TIMEOUTS = {
    "preprocess": dt.timedelta(hours=4),
    "train": dt.timedelta(hours=12),  # retries resume from the last epoch's checkpoint
    "gate": dt.timedelta(hours=1),
    "promoted": dt.timedelta(minutes=10),
    "embed_full": dt.timedelta(hours=8),
    "embed_incremental": dt.timedelta(hours=3),
    "build_index": dt.timedelta(hours=4),
    "publish": dt.timedelta(minutes=15),
    # Mode gcp with Flex Templates: the light step after each launch (embed's copies a day's
    # files into its partition, 16 requests at a time).
    registry.finish_task("preprocess"): dt.timedelta(minutes=30),
    registry.finish_task("embed"): dt.timedelta(hours=1),
}

DEFAULT_PARAMS = {
    "catalog": Param(os.environ.get("VSEARCH_CATALOG", "gs://YOUR-BUCKET/catalog"), type="string"),
    "workdir": Param(
        os.environ.get("VSEARCH_WORKDIR", "gs://YOUR-BUCKET/visual-search"), type="string"
    ),
    # The day to process; empty = the run's logical date. Required for runs without one.
    "date": Param(None, type=["null", "string"], format="date"),
    "runner": Param(
        os.environ.get("VSEARCH_RUNNER", "DirectRunner"),
        type="string",
        enum=["DirectRunner", "DataflowRunner"],
    ),
    # Dataflow only: where the jobs run. The Beam provider sets --project and --region from these
    # (through dataflow_config), so they are params of their own, not beam_options entries.
    "gcp_project": Param(os.environ.get("VSEARCH_GCP_PROJECT", ""), type="string"),
    "gcp_region": Param(os.environ.get("VSEARCH_GCP_REGION", "us-central1"), type="string"),
    # Dataflow only: Airflow's GCP connection and the workers' service account ("" = default).
    "gcp_conn_id": Param(
        os.environ.get("VSEARCH_GCP_CONN_ID", "google_cloud_default"), type="string"
    ),
    "service_account": Param(os.environ.get("VSEARCH_SERVICE_ACCOUNT", ""), type="string"),
    # Extra Beam pipeline options for every Beam stage, e.g. for Dataflow:
    # {"temp_location": "gs://...", "requirements_file": "deploy/requirements-worker.txt",
    #  "setup_file": "./pyproject.toml"}; see docs/deploy.md for the image and GPU workers.
    "beam_options": Param({}, type="object"),
    # Beam options for the two embed tasks only, applied over beam_options: the GPU workers
    # (machine type, accelerator, the GPU image). A null value removes an option, e.g.
    # {"setup_file": null, "requirements_file": null} when the image already holds the code.
    "embed_beam_options": Param({}, type="object"),
    # Extra flags for `vsearch train`, e.g. "--backbone efficientnet_b0 --epochs 30".
    "train_args": Param(os.environ.get("VSEARCH_TRAIN_ARGS", ""), type="string"),
    # Extra flags for `vsearch gate`, e.g. "--margin 0.01 --tolerance 0.02".
    "gate_args": Param(os.environ.get("VSEARCH_GATE_ARGS", ""), type="string"),
}

DEFAULT_ARGS = {
    "retries": 2,  # transient failures: preemptions, object-store hiccups
    "retry_delay": dt.timedelta(minutes=5),
}


def run_date(params: Mapping[str, Any], dag_run: Any) -> str:
    """The day a run processes: ``params.date``, else the logical date (what ``ds`` would be)."""
    if params.get("date"):
        return dt.date.fromisoformat(str(params["date"])).isoformat()
    if dag_run.logical_date is None:
        raise ValueError(
            "this run has no logical date (triggered without one): pass the day to process, "
            'e.g. airflow dags trigger visual_search_daily --conf \'{"date": "2026-01-01"}\''
        )
    return str(dag_run.logical_date.strftime("%Y-%m-%d"))


def dataflow_config(params: Mapping[str, Any], task_id: str, date: str) -> dict[str, Any]:
    """The Beam provider's DataflowConfiguration, as a dict, for one Beam task of one run."""
    if params["runner"] != "DataflowRunner":
        return {}  # the provider ignores it for other runners
    if not params["gcp_project"]:
        raise ValueError(
            "runner DataflowRunner needs the gcp_project param (or VSEARCH_GCP_PROJECT)"
        )
    return {
        "project_id": params["gcp_project"],
        "location": params["gcp_region"],
        "gcp_conn_id": params["gcp_conn_id"],
        # vsearch-embed-full-20260102-<8 random chars>: the job is findable by stage and day,
        # and a retry never collides with a job of the same name still shutting down.
        "job_name": f"vsearch-{task_id.replace('_', '-')}-{date.replace('-', '')}",
        "append_job_name": True,
        # The next task reads this job's output: the task ends when the job ends, with its state.
        "wait_until_finished": True,
        # A killed task (timeout, marked failed) cancels its job; batch jobs cancel, not drain.
        "drain_pipeline": False,
        "cancel_timeout": 600,
        "service_account": params["service_account"] or None,
    }


# What every non-Beam task gets: the run's settings, rendered from params and the run's date.
DATE = "{{ run_date(params, dag_run) }}"
DAY = {
    "catalog": "{{ params.catalog }}",
    "workdir": "{{ params.workdir }}",
    "date": DATE,
    "train_args": "{{ params.train_args }}",
    "gate_args": "{{ params.gate_args }}",
}


def beam_options(params: Mapping[str, Any], task_id: str) -> dict[str, Any]:
    """The pipeline options a Beam task starts from; the stage's own flags are added after."""
    extra = params["embed_beam_options"] if task_id.startswith("embed") else {}
    return {**params["beam_options"], **extra}  # None values: the provider drops the option


def _beam_stage(task_id: str, stage: str, **options: object) -> BeamRunPythonPipelineOperator:
    """A Beam stage run by the Beam provider as `PYTHON -m vsearch STAGE --flag=value ...`."""
    return BeamRunPythonPipelineOperator(
        task_id=task_id,
        py_file=stage,
        py_options=["-m", "vsearch"],
        py_interpreter=PIPELINE_PYTHON,  # not a template field of the operator
        runner="{{ params.runner }}",
        default_pipeline_options="{{ beam_options(params, task.task_id) }}",  # type: ignore[arg-type]
        pipeline_options={
            "catalog": "{{ params.catalog }}",
            "workdir": "{{ params.workdir }}",
            "date": DATE,
            **options,
        },
        dataflow_config=(
            "{{ dataflow_config(params, task.task_id, run_date(params, dag_run)) }}"  # type: ignore[arg-type]
        ),
        gcp_conn_id="{{ params.gcp_conn_id }}",
        pool=BEAM_POOL,
        execution_timeout=TIMEOUTS[task_id],
    )


def _run_stage(
    stage: str,
    catalog: str,
    workdir: str,
    date: str,
    train_args: str,
    gate_args: str,
    upstream: dict[str, dict[str, object] | None] | None = None,
) -> dict[str, object]:
    """Runs inside the pipeline environment (ExternalPython): one stage for one date.

    ``upstream``: results of earlier stages (their XComs), e.g. train's model version for the
    gate; one that is None (no XCom: the task was marked done by hand) is read from that stage's
    run summary, production's (a run for a candidate model the same day is recorded apart, so
    publish never picks up a candidate's index). Returns this stage's result as JSON (its XCom).
    """
    import datetime

    from vsearch.stages import DayRun, result_from_json, result_to_json, run_one

    day = DayRun(
        catalog=catalog,
        workdir=workdir,
        date=datetime.date.fromisoformat(date),
        stage_args={"train": tuple(train_args.split()), "gate": tuple(gate_args.split())},
    )
    results = {
        name: result_from_json(name, value) for name, value in (upstream or {}).items() if value
    }
    return result_to_json(run_one(stage, day, results))


def _embed_branch(workdir: str, date: str, gate: dict[str, object] | None = None) -> str:
    """Runs inside the pipeline environment: full re-embed after a promotion, else incremental.

    ``gate`` is the gate's result (its XCom); without one it is read from the gate's run summary.
    """
    import datetime

    from vsearch.registry import embed_task
    from vsearch.stages import read_result

    if gate is None:
        promoted = read_result("gate", workdir, datetime.date.fromisoformat(date)).promoted
    else:
        promoted = gate["promoted"]
    return embed_task(bool(promoted))


if GCP is None:
    SCHEDULE: Any = "@daily"
    MACROS: dict[str, Any] = {}
else:
    import vsearch_gcp_tasks as gcp

    # Pinned, whatever [scheduler] create_cron_data_intervals says: the run for day D starts when
    # D has ended (00:00 UTC of D+1) and processes D (its logical date = data_interval_start).
    SCHEDULE = CronDataIntervalTimetable("@daily", timezone="UTC")
    MACROS = gcp.gcp_macros(GCP)

# Local mode: non-Beam stages run in the pipeline's environment (ExternalPython), not Airflow's.
IN_PIPELINE_ENV: dict[str, Any] = {"python": PIPELINE_PYTHON, "expect_airflow": False}


def _limits(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "execution_timeout": TIMEOUTS[task_id], **IN_PIPELINE_ENV}


def _stage_task(stage: registry.Stage, task_id: str, full: bool = False) -> Any:
    """One stage's task, in this deployment's mode (call it inside the DAG)."""
    if GCP is not None:
        if stage.name in gcp.FLEX_STAGES:
            flags = {"full": "true"} if full else {}
            return gcp.beam_stage(GCP, task_id, stage.name, TIMEOUTS[task_id], **flags)
        return gcp.vertex_stage(GCP, task_id, stage.name, TIMEOUTS[task_id])
    if stage.beam:
        return _beam_stage(task_id, stage.name, **({"full": True} if full else {}))
    # Results flow as XComs (pulled by template, so a task marked done by hand, with no XCom,
    # falls back to the stage's run summary); a Beam task returns none: its summary is read.
    upstream = {
        i.stage: "{{ ti.xcom_pull(task_ids='" + registry.STAGES[i.stage].task_id + "') }}"
        for i in stage.inputs
        if not registry.STAGES[i.stage].beam
    }
    run = task.external_python(**_limits(task_id))(_run_stage)
    return run(stage=stage.name, upstream=upstream or None, **DAY)


def _finish_task(stage: registry.Stage, launched: Any) -> Any:
    """Mode gcp with Flex Templates: the task after ``launched`` (a task, or the two embed
    tasks behind the branch) that finishes the stage's day; else ``launched`` itself."""
    if GCP is None or GCP.beam_launch != "flex_template" or not stage.finish:
        return launched
    finish = gcp.finish_stage(GCP, stage.name, TIMEOUTS[registry.finish_task(stage.name)])
    if isinstance(launched, list):  # after the embed branch: whichever embed ran
        finish.trigger_rule = "none_failed_min_one_success"
    launched >> finish
    return finish


def _embed_branch_task() -> Any:
    """The branch that picks the day's embed task from the gate's decision."""
    gate_task = registry.STAGES["gate"].task_id
    if GCP is not None:  # the gate ran in Vertex: its decision is read from its run summary
        branch = task.branch(
            task_id="promoted", retries=gcp.LIGHT_RETRIES, execution_timeout=TIMEOUTS["promoted"]
        )(gcp.promoted_branch)
        return branch(GCP.gcp_conn_id, workdir=DAY["workdir"], date=DATE)
    branch = task.branch_external_python(**_limits("promoted"))(_embed_branch)
    pulled = "{{ ti.xcom_pull(task_ids='" + gate_task + "') }}"
    return branch(workdir=DAY["workdir"], date=DAY["date"], gate=pulled)


with DAG(
    dag_id="visual_search_daily",
    description="search by photo: preprocess, train, gate, embed, build-index, publish",
    schedule=SCHEDULE,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,  # a new deployment starts from today; past days: `airflow backfill create`
    max_active_runs=1,
    # A day's run must end before the next day's starts; past this the run fails (and calls
    # on_failure_callback) instead of holding the next day.
    dagrun_timeout=dt.timedelta(hours=23),
    on_failure_callback=vsearch_gcp.log_failed_run,
    default_args=DEFAULT_ARGS,
    params=DEFAULT_PARAMS,
    render_template_as_native_obj=True,  # beam_options and dataflow_config stay dicts
    user_defined_macros={
        "run_date": run_date,
        "dataflow_config": dataflow_config,
        "beam_options": beam_options,
        **MACROS,
    },
    tags=["visual-search"],
) as dag:
    # One task per daily stage of the registry, in its order; embed is two tasks behind a branch
    # on the gate's decision (registry.embed_task), and the stage after it runs after whichever
    # ran. The mode picks each task's operator.
    previous: Any = gcp.catalog_sensor(GCP, timeout=dt.timedelta(hours=12)) if GCP else None
    embed_done: Any = []  # the embed tasks, or the task that finishes their day
    for name in registry.DAILY_STAGES:
        stage = registry.STAGES[name]
        if name == registry.BRANCHED_STAGE:
            branch = _embed_branch_task()
            embed_tasks = [
                _stage_task(stage, registry.EMBED_FULL_TASK, full=True),
                _stage_task(stage, registry.EMBED_INCREMENTAL_TASK),
            ]
            if previous is not None:
                previous >> branch
            branch >> embed_tasks
            previous = embed_done = _finish_task(stage, embed_tasks)
            continue
        current = _stage_task(stage, stage.task_id)
        if isinstance(previous, list):  # after the embed branch: whichever embed ran
            getattr(current, "operator", current).trigger_rule = "none_failed_min_one_success"
        if previous is not None:
            previous >> current
        previous = _finish_task(stage, current)
    if GCP is not None and GCP.bigquery_table:  # the day's committed embeddings into BigQuery
        files = task(
            task_id="embedding_files",
            trigger_rule="none_failed_min_one_success",
            retries=gcp.LIGHT_RETRIES,
        )(gcp.embedding_files)(GCP.gcp_conn_id, workdir=DAY["workdir"], date=DATE)
        embed_done >> files >> gcp.load_embeddings(GCP)
