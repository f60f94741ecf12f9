"""The daily DAG, run by Airflow itself (``dag.test()``) in the Airflow environment.

Airflow lives in .venv-airflow (pyproject.toml says why); these tests drive it from there and check
the results from here, with the same readers a user would use.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import paths, pointers, runs, storage

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
TINY_TRAIN = "--epochs 1 --batch-size 32 --localiser-steps 20"
# Floors at 0 let the one-epoch first model through; margin 1.0 means a later candidate is never
# promoted, so day 2 must take the incremental branch.
TINY_GATE = "--no-beat-baselines --margin 1.0"


def _airflow(tmp_path: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    assert AIRFLOW_PYTHON.exists(), (
        "run `make airflow-env` (make test does) to create .venv-airflow"
    )
    home = tmp_path / "airflow-home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Airflow's 30 s default is for a scheduler's parsing loop; two test workers beside a
        # benchmark on 2 cores can take longer to import the Beam provider (an import error then).
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "VSEARCH_PYTHON": sys.executable,  # the stages run in this (the pipeline's) environment
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [str(AIRFLOW_PYTHON), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _run_days(tmp_path: Path, conf: dict[str, str], *dates: str) -> list[dict[str, object]]:
    out = _airflow(tmp_path, str(REPO / "tests" / "dag_harness.py"), json.dumps(conf), *dates)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and len(lines) == len(dates), out.stdout[-4000:] + out.stderr[-6000:]
    return lines


def test_dagbag_imports_with_the_expected_graph(tmp_path: Path) -> None:
    script = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder='dags')\n"
        "dag = bag.dags.get('visual_search_daily')\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "  'edges': {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} if dag else None,\n"
        "  'catchup': dag.catchup if dag else None, 'max_active_runs': dag.max_active_runs if dag else None,\n"
        "  'schedule': str(dag.schedule) if dag else None,\n"
        "  'beam': sorted(t.task_id for t in dag.tasks if type(t).__name__ == 'BeamRunPythonPipelineOperator') if dag else None}))\n"
    )
    out = _airflow(tmp_path, "-c", script, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["errors"] == {}
    assert got["edges"] == {
        "preprocess": ["train"],
        "train": ["gate"],
        "gate": ["promoted"],
        "promoted": ["embed_full", "embed_incremental"],
        "embed_full": ["build_index"],
        "embed_incremental": ["build_index"],
        "build_index": ["publish"],
        "publish": [],
    }
    assert got["catchup"] is False and got["max_active_runs"] == 1 and got["schedule"] == "@daily"
    assert got["beam"] == ["build_index", "embed_full", "embed_incremental", "preprocess"]


def _assert_index_answers(catalog: str, workdir: str, date: dt.date) -> None:
    from core.snapshot import read_snapshot
    from search.photo_search import PhotoSearch

    snapshot = read_snapshot(catalog, date)
    listing = snapshot.listings[0]
    with PhotoSearch.open(workdir) as searcher:
        hits = searcher.search([storage.read_bytes(listing.image_uris[0])], k=10)[0]
    assert hits and hits[0].listing_id == listing.listing_id  # its own photo finds it first


# Two days of every stage, each a fresh process: ~9 min beside another test worker on 2 cores.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_days_full_then_incremental(tiny_catalog: str, tmp_path: Path) -> None:
    workdir = str(tmp_path / "work")
    conf = {
        "catalog": tiny_catalog,
        "workdir": workdir,
        "train_args": TINY_TRAIN,
        "gate_args": TINY_GATE,
    }
    day1, day2 = _run_days(tmp_path, conf, "2026-01-01", "2026-01-02")
    assert day1["state"] == "success", day1
    assert (
        day1["tasks"]["embed_full"] == "success" and day1["tasks"]["embed_incremental"] == "skipped"
    )
    assert day1["tasks"]["publish"] == "success"
    assert day2["state"] == "success", day2
    assert (
        day2["tasks"]["embed_incremental"] == "success" and day2["tasks"]["embed_full"] == "skipped"
    )

    d2 = dt.date(2026, 1, 2)
    embed2 = runs.read_summary(workdir, "embed", d2)
    assert embed2["skipped"] > embed2["ok"] > 0  # day 2 embedded only new and changed photos
    current = pointers.read_pointer(paths.current_index_pointer(workdir)).value
    assert (
        current
        and json.loads(storage.read_text(current))["ntotal"]
        == embed2["read"] - embed2["dead_lettered"]
    )
    _assert_index_answers(tiny_catalog, workdir, d2)
