"""Runs the daily DAG with Airflow's own ``dag.test()``; executed by .venv-airflow's python.

Usage: python tests/dag_harness.py CONF_JSON DATE [DATE ...]   (CONF_JSON: the DAG run's params)
Prints one JSON line per date: {"date": ..., "state": ..., "tasks": {task_id: state}}.
DAG_MARK_SUCCESS (optional): a regex of task ids that dag.test() marks successful instead of running.
AIRFLOW_HOME must point to a scratch folder (the caller makes one); the sqlite DB is migrated here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    conf, *dates = sys.argv[1:]
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return 1
    dag = bag.dags["visual_search_daily"]
    for task in dag.tasks:
        task.retries = 0  # a failure must fail the test now, not wait for a retry
    for date in dates:
        logical = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
        run = dag.test(
            logical_date=logical,
            run_conf=json.loads(conf),
            mark_success_pattern=os.environ.get("DAG_MARK_SUCCESS") or None,
        )
        tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        print(json.dumps({"date": date, "state": str(run.state), "tasks": tasks}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
