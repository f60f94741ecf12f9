"""The whole human-evaluation loop on a trained tiny pipeline, with the simulated rater:
eval-sample (published index vs a candidate by exact search) -> rate -> eval-report -> gate."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest

from core import paths, pointers, snapshot, storage
from tests.conftest import copy_workdir
from vsearch import cli
from vsearch.evaluation.simulate import simulate_loop
from vsearch.evaluation.task import read_task
from vsearch.stages import DayRun, run_day, run_one

DAY = dt.date(2026, 1, 1)
CANDIDATE = "20260101-candidate"


@pytest.fixture(scope="module")
def loop(
    tiny_catalog: str, trained_workdir: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, dict[str, str]]:
    workdir = copy_workdir(trained_workdir, str(tmp_path_factory.mktemp("eval") / "work"))
    run_day(DayRun(tiny_catalog, workdir, DAY), ("embed", "build-index", "publish"))
    published = pointers.read_pointer(paths.published_model_pointer(workdir)).value
    assert published
    # A candidate with no index of its own: the same network under another version, embedded.
    shutil.copytree(paths.model_dir(workdir, published), paths.model_dir(workdir, CANDIDATE))
    config_uri = storage.join(paths.model_dir(workdir, CANDIDATE), "config.json")
    config = json.loads(storage.read_text(config_uri))
    storage.write_text(config_uri, json.dumps({**config, "version": CANDIDATE}))
    run_one(
        "embed", DayRun(tiny_catalog, workdir, DAY, stage_args={"embed": ("--model", CANDIDATE)})
    )
    out = simulate_loop(
        workdir,
        tiny_catalog,
        DAY.isoformat(),
        model=CANDIDATE,
        against=published,
        queries=8,
        k=5,
        raters=2,
        noise=0.3,
    )
    return workdir, published, out


def test_sample_is_stratified_and_blind(loop, tiny_catalog: str) -> None:  # type: ignore[no-untyped-def]
    workdir, published, out = loop
    task = read_task(out["task"])
    assert out["task"] == paths.eval_task(workdir, task.task_id)
    assert task.models == (CANDIDATE, published)
    assert task.retrieval[published].startswith("index ")
    assert task.retrieval[CANDIDATE] == "exact search"
    snap = snapshot.read_snapshot(tiny_catalog, DAY)
    tops = {lst.category.split("/")[0] for lst in snap.listings}
    assert {q.category.split("/")[0] for q in task.queries} == tops
    assert {q.kind for q in task.queries} == {"listing", "review"}
    assert {q.sides[0] for q in task.queries} == {CANDIDATE, published}  # left/right randomised
    for q in task.queries:
        for v in task.models:
            assert len(q.results[v]) == 5
            if q.kind == "listing":  # its own listing would be a trivial hit
                assert q.listing_id not in {r.listing_id for r in q.results[v]}
    # Same seed, same task: sampling again gives the same queries in the same order.
    again = cli.main(
        [
            "eval-sample",
            "--workdir",
            workdir,
            "--date",
            DAY.isoformat(),
            "--catalog",
            tiny_catalog,
            "--model",
            CANDIDATE,
            "--against",
            published,
            "--queries",
            "8",
            "--k",
            "5",
        ]
    )
    assert again == 0
    assert [q.query_id for q in read_task(out["task"]).queries] == [
        q.query_id for q in task.queries
    ]


def test_report_says_simulated_and_measures_both_models(loop, capsys) -> None:  # type: ignore[no-untyped-def]
    workdir, published, out = loop
    report = json.loads(storage.read_text(out["report_json"]))
    assert report["simulated"] is True
    assert [r["simulated"] for r in report["raters"]] == [True, True]
    for v in (CANDIDATE, published):
        m = report["metrics"][v]
        assert m["queries_rated"] == 8
        p = m["precision_relevant_or_partly_at_5"]
        assert 0.0 <= p["ci_low"] <= p["mean"] <= p["ci_high"] <= 1.0
    sbs = report["side_by_side"]
    assert sbs["queries_compared"] == 8 and sbs["wins"] + sbs["ties"] + sbs["losses"] == 8
    assert not sbs["candidate_loses_significantly"]  # the same network cannot lose significantly
    agreement = report["agreement"]
    assert agreement["method"] == "cohen_kappa" and agreement["kappa"] < 1.0  # noisy second rater
    page = storage.read_text(out["report_html"])
    assert "SIMULATED RATINGS" in page and "<svg" in page and "data:image/jpeg;base64," in page
    assert cli.main(["eval-report", "--task", out["task"]]) == 0
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed and "sign test" in printed and "cohen_kappa" in printed


def test_gate_requires_a_human_verdict(loop) -> None:  # type: ignore[no-untyped-def]
    from pipelines import gate

    workdir, published, _ = loop
    strict = gate.GateSettings(workdir, CANDIDATE, require_human_eval=True)
    d = gate.run(strict)
    assert not d.promoted
    assert any("simulated" in r for r in d.reasons)
    saved = json.loads(
        storage.read_text(storage.join(paths.model_dir(workdir, CANDIDATE), "gate.json"))
    )
    assert any("human eval" in r for r in saved["reasons"])
    assert pointers.read_pointer(paths.published_model_pointer(workdir)).value == published
    # The demo's switch: simulated ratings accepted, no significant loss -> promoted.
    assert (
        cli.main(
            [
                "gate",
                "--workdir",
                workdir,
                "--candidate",
                CANDIDATE,
                "--require-human-eval",
                "--allow-simulated-ratings",
            ]
        )
        == 0
    )
    assert pointers.read_pointer(paths.published_model_pointer(workdir)).value == CANDIDATE
