"""Renders the daily DAG's tasks for one run, as Airflow would, without running them.

Executed by .venv-airflow's python. Usage: python tests/dag_render.py CASES_JSON, where CASES_JSON
is a list of [conf, logical date "YYYY-MM-DD" or null]. Prints one JSON line per case: for each
Beam task the command line its operator would run (``-m MODULE --runner=R`` and the options built
by the provider itself: ``dataflow_config`` applied, then ``beam_options_to_args``) and its
Dataflow settings; for each Python task its rendered keyword arguments; for every task its pool
and timeout. A task whose rendering fails reports ``{"error": ...}`` (what its log would say).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _render(task: Any, dag: Any, params: dict[str, Any], logical: dt.datetime | None) -> dict:
    context: dict[str, Any] = {
        "params": params,
        "dag": dag,
        "task": task,
        "dag_run": SimpleNamespace(logical_date=logical, conf={}),
        # Upstream results arrive as XComs; rendering alone has none (as a task marked done).
        "ti": SimpleNamespace(xcom_pull=lambda **_: None),
    }
    if logical is not None:  # as Airflow's task runner: these keys exist only with a logical date
        context |= {"ds": logical.strftime("%Y-%m-%d"), "logical_date": logical}
    out: dict[str, Any] = {
        "pool": task.pool,
        "timeout_s": task.execution_timeout.total_seconds() if task.execution_timeout else None,
    }
    try:
        task.render_template_fields(context, jinja_env=dag.get_template_env())
    except Exception as e:  # the message is what a user sees in the task log
        return out | {"error": f"{type(e).__name__}: {e}"}
    if type(task).__name__ != "BeamRunPythonPipelineOperator":
        return out | {"kwargs": task.op_kwargs}
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    task._cast_dataflow_config()
    task.pipeline_options.setdefault("labels", {})  # execute() adds the airflow-version label
    is_dataflow, job_name, options, _, _ = task._init_pipeline_options(
        format_pipeline_options=True, job_name_variable_key="job_name"
    )
    config = task.dataflow_config
    return out | {
        "runner": task.runner,
        # BeamHook._start_pipeline: [python, *py_options, py_file, --runner=R, *options]
        "argv": [
            *task.py_options,
            task.py_file,
            f"--runner={task.runner}",
            *beam_options_to_args(options),
        ],
        "is_dataflow": is_dataflow,
        "job_name": job_name,
        "gcp_conn_id": task.gcp_conn_id,
        "wait_until_finished": config.wait_until_finished,
        "cancel_timeout": config.cancel_timeout,
        "drain_pipeline": config.drain_pipeline,
    }


def main() -> int:
    # The Dataflow hook reads its connection when built; one without credentials is enough here
    # (it is never used to call Google).
    os.environ.setdefault("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "google-cloud-platform://")
    from airflow.dag_processing.dagbag import DagBag

    for conf, date in json.loads(sys.argv[1]):
        bag = DagBag(dag_folder=str(REPO / "dags"))  # parsed afresh: rendering mutates tasks
        if bag.import_errors:
            print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
            return 1
        dag = bag.dags["visual_search_daily"]
        params = copy.deepcopy(dag.params)
        for key, value in conf.items():
            params[key] = value
        resolved = params.validate()  # the params a run triggered with this conf gets
        logical = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC) if date else None
        tasks = {t.task_id: _render(t, dag, resolved, logical) for t in dag.tasks}
        print(json.dumps(tasks, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
