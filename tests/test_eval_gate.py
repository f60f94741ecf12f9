"""``gate --require-human-eval``: the verdict read from eval-report's report.json files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core import paths, storage
from pipelines.gate import GateSettings
from pipelines.gate_rules import human_eval_verdict

CAND, PUB = "20260102-cand", "20260101-pub"


def _report(
    workdir: str,
    task_id: str,
    *,
    wins: int,
    losses: int,
    baseline: str | None = PUB,
    simulated: bool = False,
    created: str = "2026-01-02T00:00:00+00:00",
) -> None:
    from vsearch.evaluation.stats import sign_test

    p = sign_test(wins, losses)
    report: dict[str, Any] = {
        "candidate": CAND,
        "baseline": baseline,
        "simulated": simulated,
        "created_at": created,
        "metrics": {CAND: {"queries_rated": wins + losses}},
        "side_by_side": None
        if baseline is None
        else {
            "queries_compared": wins + losses,
            "wins": wins,
            "ties": 0,
            "losses": losses,
            "p_value": p,
        },
    }
    storage.write_text(
        storage.join(paths.eval_root(workdir), task_id, "report.json"), json.dumps(report)
    )


def _verdict(workdir: str, published: str | None = PUB, **kw: Any) -> tuple[bool, list[str]]:
    return human_eval_verdict(
        workdir, CAND, published, GateSettings(workdir, CAND, require_human_eval=True, **kw)
    )


def test_no_ratings_refuses_and_says_how_to_get_them(tmp_path: Path) -> None:
    ok, reasons = _verdict(str(tmp_path))
    assert not ok
    assert f"no blind side-by-side against {PUB}" in reasons[0]
    assert f"vsearch eval-sample --model {CAND} --against {PUB}" in reasons[0]
    # A side-by-side against another (older) baseline is no verdict on today's published model.
    _report(str(tmp_path), "old", wins=9, losses=0, baseline="20251231-old")
    assert not _verdict(str(tmp_path))[0]


def test_a_significant_loss_refuses_a_non_significant_one_does_not(tmp_path: Path) -> None:
    w = str(tmp_path)
    _report(w, "t1", wins=1, losses=9)  # p = 0.021
    ok, reasons = _verdict(w)
    assert not ok and "loses the blind side-by-side significantly" in reasons[0]
    assert "1 wins, 0 ties, 9 losses" in reasons[0]
    _report(w, "t2", wins=3, losses=5, created="2026-01-03T00:00:00+00:00")  # p = 0.73; newer
    ok, reasons = _verdict(w)
    assert ok and "3 wins" in reasons[0]


def test_simulated_ratings_are_no_human_verdict_unless_allowed(tmp_path: Path) -> None:
    w = str(tmp_path)
    _report(w, "sim", wins=5, losses=0, simulated=True)
    ok, reasons = _verdict(w)
    assert not ok and "simulated" in reasons[0]
    assert _verdict(w, allow_simulated_ratings=True)[0]


def test_first_model_needs_ratings_of_its_own(tmp_path: Path) -> None:
    w = str(tmp_path)
    assert not _verdict(w, published=None)[0]
    _report(w, "single", wins=4, losses=0, baseline=None)
    ok, reasons = _verdict(w, published=None)
    assert ok and "4 queries rated" in reasons[0]
