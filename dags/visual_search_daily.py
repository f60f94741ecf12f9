"""Daily visual-search DAG: wiring only; every task calls a stage of the ``vsearch`` package.

preprocess -> train -> gate -> (promoted: embed --full | not promoted: incremental embed)
-> build-index (validates recall; fails rather than write a bad index) -> publish.

Settings come from one place, the DAG params below (defaults from environment variables so a
deployment sets them once; override per run with ``airflow dags trigger --conf``). Every task
processes the run's data-interval date (``ds``), and every stage is idempotent for its date, so
clearing and re-running a day is safe. Beam stages run through the Apache Beam provider with the
runner and pipeline options from params: DirectRunner by default; see the README for Dataflow
with GPU workers.

Human evaluation before a model ships (README "Human evaluation"; nothing here changes by
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
from pathlib import Path

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param, task

# The pipeline's own environment (TensorFlow, TFT, Beam, faiss): Airflow runs the stages there,
# never in its own environment (see setup.py for why the two are apart).
PIPELINE_PYTHON = os.environ.get(
    "VSEARCH_PYTHON", str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python")
)

DEFAULT_PARAMS = {
    "catalog": Param(os.environ.get("VSEARCH_CATALOG", "gs://YOUR-BUCKET/catalog"), type="string"),
    "workdir": Param(
        os.environ.get("VSEARCH_WORKDIR", "gs://YOUR-BUCKET/visual-search"), type="string"
    ),
    "runner": Param(os.environ.get("VSEARCH_RUNNER", "DirectRunner"), type="string"),
    # Extra Beam pipeline options for every Beam stage, e.g. for Dataflow:
    # {"project": "p", "region": "r", "temp_location": "gs://...", "setup_file": "./setup.py"}
    "beam_options": Param({}, type="object"),
    # Extra flags for `vsearch train`, e.g. "--backbone efficientnet_b0 --image-size 224".
    "train_args": Param(os.environ.get("VSEARCH_TRAIN_ARGS", ""), type="string"),
    # Extra flags for `vsearch gate`, e.g. "--margin 0.01 --tolerance 0.02".
    "gate_args": Param(os.environ.get("VSEARCH_GATE_ARGS", ""), type="string"),
}

DEFAULT_ARGS = {
    "retries": 2,  # transient failures: preemptions, object-store hiccups
    "retry_delay": dt.timedelta(minutes=5),
}

# What every non-Beam task gets: the run's settings, rendered from params and the data interval.
DAY = {
    "catalog": "{{ params.catalog }}",
    "workdir": "{{ params.workdir }}",
    "date": "{{ ds }}",
    "train_args": "{{ params.train_args }}",
    "gate_args": "{{ params.gate_args }}",
}


def _beam_stage(task_id: str, stage: str, **options: object) -> BeamRunPythonPipelineOperator:
    """A Beam stage run by the Beam provider as `PYTHON -m vsearch STAGE --flag=value ...`."""
    return BeamRunPythonPipelineOperator(
        task_id=task_id,
        py_file=stage,
        py_options=["-m", "vsearch"],
        py_interpreter=PIPELINE_PYTHON,  # not a template field of the operator
        runner="{{ params.runner }}",
        default_pipeline_options="{{ params.beam_options }}",  # type: ignore[arg-type]
        pipeline_options={
            "catalog": "{{ params.catalog }}",
            "workdir": "{{ params.workdir }}",
            "date": "{{ ds }}",
            **options,
        },
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
    run summary. Returns this stage's result as JSON (its XCom).
    """
    import datetime

    from vsearch.app.stages import DayRun, result_from_json, result_to_json, run_one

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

    from vsearch.app.stages import read_result

    if gate is None:
        promoted = read_result("gate", workdir, datetime.date.fromisoformat(date)).promoted
    else:
        promoted = gate["promoted"]
    return "embed_full" if promoted else "embed_incremental"


with DAG(
    dag_id="visual_search_daily",
    description="search by photo: preprocess, train, gate, embed, build-index, publish",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=DEFAULT_PARAMS,
    render_template_as_native_obj=True,  # beam_options stays a dict
    tags=["visual-search"],
) as dag:
    in_pipeline_env = {"python": PIPELINE_PYTHON, "expect_airflow": False}

    preprocess = _beam_stage("preprocess", "preprocess")
    train = task.external_python(task_id="train", **in_pipeline_env)(_run_stage)
    gate = task.external_python(task_id="gate", **in_pipeline_env)(_run_stage)
    promoted = task.branch_external_python(task_id="promoted", **in_pipeline_env)(_embed_branch)
    embed_full = _beam_stage("embed_full", "embed", full=True)
    embed_incremental = _beam_stage("embed_incremental", "embed")
    build_index = _beam_stage("build_index", "build-index")
    # After whichever embed ran; the other one is skipped by the branch.
    build_index.trigger_rule = "none_failed_min_one_success"
    publish = task.external_python(task_id="publish", **in_pipeline_env)(_run_stage)

    # Results flow as XComs: train's model version -> gate -> its decision -> the branch (pulled
    # by template, so a task marked done by hand, with no XCom, falls back to its run summary).
    # Publish reads build-index's manifest from its run summary (a Beam task returns no XCom).
    trained = train(stage="train", **DAY)
    decision = gate(stage="gate", upstream={"train": "{{ ti.xcom_pull(task_ids='train') }}"}, **DAY)
    branch = promoted(DAY["workdir"], DAY["date"], "{{ ti.xcom_pull(task_ids='gate') }}")
    preprocess >> trained >> decision >> branch >> [embed_full, embed_incremental]
    [embed_full, embed_incremental] >> build_index >> publish(stage="publish", **DAY)
