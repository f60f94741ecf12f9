"""``vsearch eval-report`` figures against values computed by hand, on tasks and ratings written
to disk the way the app writes them; the report page's colours read back in a headless browser."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import storage
from tests.eval_helpers import BROWSER_ARGS, hand_task, photo
from vsearch import cli
from vsearch.evaluation import report
from vsearch.evaluation.ratings import GRADE_COLOURS, UNRATED_COLOUR, RatingStore
from vsearch.evaluation.task import Query, QueryKind, Result

LOG3 = math.log2(3)


def _query(tmp: Path, qid: str, kind: QueryKind, own: str, lists: dict[str, list[str]]) -> Query:
    def img(name: str) -> str:
        shade = sum(name.encode()) % 200
        return photo(str(tmp / "photos" / f"{name}.jpg"), (shade, 40, 255 - shade))

    results = {
        v: [Result(lid, img(lid), 1.0 - i / 10, "cat") for i, lid in enumerate(ids)]
        for v, ids in lists.items()
    }
    sides = tuple(lists) if len(lists) == 2 else ()
    return Query(qid, img(qid), kind, own, "cat", "cat", results, sides)


def _rate(task_uri: str, rater: str, grades: dict[tuple[str, str], str]) -> None:
    store = RatingStore(task_uri)
    for (qid, lid), label in grades.items():
        store.put(rater, qid, lid, {"relevant": 2, "partly": 1, "not": 0}[label])


def _report(task_uri: str) -> tuple[dict[str, Any], list[str], str]:
    json_uri, html_uri = report.run(report.ReportSettings(task_uri, bootstrap_samples=200))
    data = json.loads(storage.read_text(json_uri))
    return data, report.summary_lines(data), storage.read_text(html_uri)


def _row(data: dict[str, Any], model: str, qid: str) -> dict[str, Any]:
    return next(p for p in data["metrics"][model]["per_query"] if p["query_id"] == qid)


def test_a_review_photo_whose_own_listing_was_missed_is_not_an_ideal_ranking(
    tmp_path: Path,
) -> None:
    queries = [
        # A buyer's photo of L0; the model found three partly relevant listings, not L0.
        _query(tmp_path, "qmissed", "review", "L0", {"vA": ["A", "B", "C"]}),
        # A buyer's photo of L1, found second.
        _query(tmp_path, "qfound", "review", "L1", {"vA": ["D", "L1", "E"]}),
        # A listing photo: its own listing is left out of its results on purpose.
        _query(tmp_path, "qlisting", "listing", "L2", {"vA": ["F", "G", "H"]}),
    ]
    task_uri = hand_task(str(tmp_path / "w"), queries)
    _rate(
        task_uri,
        "alice",
        {
            ("qmissed", "A"): "partly",
            ("qmissed", "B"): "partly",
            ("qmissed", "C"): "partly",
            ("qfound", "D"): "not",
            ("qfound", "L1"): "relevant",
            ("qfound", "E"): "partly",
            ("qlisting", "F"): "partly",
            ("qlisting", "G"): "partly",
            ("qlisting", "H"): "partly",
        },
    )
    data, lines, page = _report(task_uri)
    missed = _row(data, "vA", "qmissed")
    # Ordered "perfectly" among what it found, but the ideal puts L0 (grade 2) first:
    # (1 + 1/log2 3 + 1/2) / (2 + 1/log2 3 + 1/2) = 0.6806; precision "relevant" is 0.
    assert missed["ndcg"] == pytest.approx((1 + 1 / LOG3 + 0.5) / (2 + 1 / LOG3 + 0.5))
    assert missed["ndcg"] < 1 and missed["precision_relevant"] == 0.0
    assert missed["precision_relevant_or_partly"] == 1.0
    assert missed["known_relevant"] == "L0" and missed["known_relevant_rank"] is None
    found = _row(data, "vA", "qfound")
    assert found["ndcg"] == pytest.approx((2 / LOG3 + 0.5) / (2 + 1 / LOG3))
    assert found["precision_relevant"] == pytest.approx(1 / 3)
    assert found["precision_relevant_or_partly"] == pytest.approx(2 / 3)
    assert found["known_relevant_rank"] == 2
    listing = _row(data, "vA", "qlisting")
    assert listing["ndcg"] == 1.0 and listing["known_relevant"] is None
    m = data["metrics"]["vA"]
    assert data["report_version"] == 2
    assert m["precision_relevant_at_3"]["mean"] == pytest.approx(1 / 9)
    assert m["precision_relevant_or_partly_at_3"]["mean"] == pytest.approx(8 / 9)
    # Both precisions are printed, by the grade scale's words, beside nDCG.
    (line,) = [x for x in lines if x.startswith("vA:")]
    assert "precision@3 relevant 0.111 [" in line and "relevant or partly 0.889 [" in line
    assert f"nDCG@3 {m['ndcg_at_3']['mean']:.3f} [" in line
    assert "own listing <b>missed</b>" in page and "own listing at 2" in page


def test_side_by_side_ideal_knows_what_the_other_list_found(tmp_path: Path) -> None:
    q = _query(tmp_path, "q1", "listing", "Z", {"cand": ["A", "B"], "base": ["C", "D"]})
    task_uri = hand_task(str(tmp_path / "w"), [q], models=("cand", "base"), k=2)
    _rate(
        task_uri,
        "alice",
        {
            ("q1", "A"): "relevant",
            ("q1", "B"): "not",
            ("q1", "C"): "relevant",
            ("q1", "D"): "relevant",
        },
    )
    data, _, _ = _report(task_uri)
    # The candidate found one relevant listing where the baseline found two: not both "ideal".
    assert _row(data, "cand", "q1")["ndcg"] == pytest.approx(2 / (2 + 2 / LOG3))
    assert _row(data, "base", "q1")["ndcg"] == 1.0
    assert data["side_by_side"]["losses"] == 1


def test_agreement_says_over_what_it_was_measured_and_warns_when_thin(tmp_path: Path) -> None:
    queries = [
        _query(tmp_path, f"q{i}", "listing", f"own{i}", {"vA": [f"A{i}", f"B{i}", f"C{i}"]})
        for i in range(2)
    ]
    task_uri = hand_task(str(tmp_path / "w"), queries)
    for i in range(2):
        _rate(
            task_uri,
            "alice",
            {
                (f"q{i}", f"A{i}"): "relevant",
                (f"q{i}", f"B{i}"): "relevant",
                (f"q{i}", f"C{i}"): "relevant",
            },
        )
        _rate(
            task_uri,
            "bob",
            {
                (f"q{i}", f"A{i}"): "relevant",
                (f"q{i}", f"B{i}"): "partly",
                (f"q{i}", f"C{i}"): "not",
            },
        )
    # A rating of a pair this task does not show (an older task's query) is left out.
    RatingStore(task_uri).put("carol", "qgone", "A0", 0)
    data, lines, page = _report(task_uri)
    # Relevance of a result = share of raters saying "relevant": (1 + 1/2 + 1/2) / 3.
    assert data["metrics"]["vA"]["precision_relevant_at_3"]["mean"] == pytest.approx(2 / 3)
    assert data["metrics"]["vA"]["precision_relevant_or_partly_at_3"]["mean"] == pytest.approx(
        5 / 6
    )
    agr = data["agreement"]
    assert agr["raters"] == ["alice", "bob"] and agr["rater_count"] == 2
    assert agr["items_rated_by_all"] == 6 and agr["min_items"] == 50
    assert agr["kappa"] == pytest.approx(0.0)  # agree on 2 of 6 = chance given bob's spread
    assert agr["ci_low"] <= agr["kappa"] <= agr["ci_high"]
    assert "only 6 results" in agr["warning"] and "50" in agr["warning"]
    assert "agreement (cohen_kappa): 0.000 [" in "\n".join(lines)
    assert "over 6 results rated by all 2 raters (alice, bob)" in "\n".join(lines)
    assert any(x.startswith("WARNING agreement: only 6 results") for x in lines)
    assert '<li class="warn">WARNING agreement' in page


def test_agreement_over_fifty_results_has_no_warning_and_one_rater_none(tmp_path: Path) -> None:
    queries = [
        _query(tmp_path, f"q{i}", "listing", f"own{i}", {"vA": [f"L{i}-{j}" for j in range(5)]})
        for i in range(10)
    ]
    task_uri = hand_task(str(tmp_path / "w"), queries, k=5)
    everything = {(q.query_id, r.listing_id): "partly" for q in queries for r in q.results["vA"]}
    _rate(task_uri, "alice", everything)
    data, lines, _ = _report(task_uri)
    assert data["agreement"] is None
    assert "agreement: not measured (1 rater(s); it needs 2)" in lines
    _rate(task_uri, "bob", everything)
    data, lines, _ = _report(task_uri)
    assert data["agreement"]["items_rated_by_all"] == 50 and data["agreement"]["warning"] is None
    assert not any("WARNING" in x for x in lines)


def test_a_task_whose_ids_hold_dot_dot_is_refused_naming_the_id(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    q = _query(tmp_path, "q1", "review", "L0", {"vA": ["A", "B", "C"]})
    task_uri = hand_task(str(tmp_path / "w"), [q])
    text = storage.read_text(task_uri).replace('"q1"', '"../../etc"')
    storage.write_text(task_uri, text)
    assert cli.main(["eval-report", "--task", task_uri]) != 0
    err = capsys.readouterr().err
    assert "../../etc" in err and task_uri in err and "Traceback" not in err


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        yield b
        b.close()


def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_report_borders_follow_the_grade_scale(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    q = _query(tmp_path, "q1", "listing", "Z", {"vA": ["A", "B", "C"]})
    task_uri = hand_task(str(tmp_path / "w"), [q])
    _rate(
        task_uri, "alice", {("q1", "A"): "relevant", ("q1", "B"): "relevant", ("q1", "C"): "partly"}
    )
    _rate(task_uri, "bob", {("q1", "A"): "relevant", ("q1", "B"): "partly", ("q1", "C"): "not"})
    json_uri, html_uri = report.run(report.ReportSettings(task_uri, bootstrap_samples=50))
    page = browser.new_page()
    page.goto(f"file://{html_uri}")
    borders = page.eval_on_selector_all(
        ".row img",
        "els => els.map(e => [getComputedStyle(e).borderTopColor, getComputedStyle(e).borderTopStyle])",
    )
    # The query photo, then A (both relevant), B (relevant + partly: shown partly, never
    # relevant), C (partly + not: shown not); dashed where the raters disagree.
    assert borders[1:] == [
        [rgb(GRADE_COLOURS[2]), "solid"],
        [rgb(GRADE_COLOURS[1]), "dashed"],
        [rgb(GRADE_COLOURS[0]), "dashed"],
    ]
    assert "relevant, partly (mean 1.50)" in page.get_attribute(".row img:nth-of-type(3)", "title")
    legend = page.eval_on_selector_all(
        "p span[style*='border']", "els => els.map(e => getComputedStyle(e).borderTopColor)"
    )
    expected = [rgb(GRADE_COLOURS[g]) for g in (2, 1, 0)] + [rgb(UNRATED_COLOUR)]
    assert legend == expected
    # The side-by-side and model colours are none of the grade colours.
    assert not {c.lower() for c in GRADE_COLOURS.values()} & set(
        page.eval_on_selector_all("svg rect", "els => els.map(e => e.getAttribute('fill'))")
    )
    page.close()


def test_three_raters_agreement_is_fleiss_over_the_results_all_three_rated(tmp_path: Path) -> None:
    q = _query(tmp_path, "q1", "listing", "Z", {"vA": ["A", "B", "C"]})
    task_uri = hand_task(str(tmp_path / "w"), [q])
    same = {("q1", "A"): "relevant", ("q1", "B"): "partly", ("q1", "C"): "not"}
    _rate(task_uri, "alice", same)
    _rate(task_uri, "bob", same)
    _rate(task_uri, "carol", {("q1", "A"): "relevant", ("q1", "B"): "partly"})  # C not yet
    data, lines, _ = _report(task_uri)
    agr = data["agreement"]
    assert agr["method"] == "fleiss_kappa" and agr["rater_count"] == 3
    assert agr["items_rated_by_all"] == 2 and agr["kappa"] == pytest.approx(1.0)
    assert "over 2 results rated by all 3 raters (alice, bob, carol)" in "\n".join(lines)
