"""The ratings store: atomic, idempotent, last-write-wins, per rater, on local disk and gs://."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import storage
from vsearch.evaluation.ratings import RatingStore, ReservedRaterName, display_grade


def _exercise(task_uri: str) -> None:
    store = RatingStore(task_uri)
    store.put("alice", "q1", "L1", 2)
    store.put("alice", "q1", "L1", 2)  # repeat: still one rating
    store.put("alice", "q1", "L2", 1)
    store.put("alice", "q1", "L2", 0)  # change: the last one wins
    store.put("bob", "q1", "L1", 0)  # another rater, same result: kept apart
    store.put("simulated-gt", "q1", "L1", 2, simulated=True)
    mine = store.of_rater("alice")
    assert {k: r.grade for k, r in mine.items()} == {("q1", "L1"): 2, ("q1", "L2"): 0}
    everyone = store.all()
    assert sorted(everyone) == ["alice", "bob", "simulated-gt"]
    assert everyone["bob"][("q1", "L1")].grade == 0
    assert everyone["simulated-gt"][("q1", "L1")].simulated
    assert not everyone["alice"][("q1", "L1")].simulated


def test_local_store(tmp_path: Path) -> None:
    task = str(tmp_path / "eval" / "t" / "task.json")
    _exercise(task)
    files = storage.list_prefix(str(tmp_path / "eval" / "t" / "ratings"))
    assert len(files) == 4 and all(f.endswith(".json") for f in files)  # no temp file left


def test_gcs_store(gcs_bucket: str) -> None:
    _exercise(f"{gcs_bucket}/eval/t/task.json")


def test_bad_names_are_refused() -> None:
    store = RatingStore("/tmp/unused/task.json")
    with pytest.raises(ValueError, match="rater name"):
        store.put("../etc", "q1", "L1", 2)
    with pytest.raises(ValueError, match="query id"):
        store.put("alice", "../../q", "L1", 2)
    with pytest.raises(ValueError, match="grade"):
        store.put("alice", "q1", "L1", 5)
    with pytest.raises(ValueError, match="rater name"):
        store.put("alice\n", "q1", "L1", 2)  # a name is one line


def test_simulated_names_are_reserved_and_ratings_labelled_by_name() -> None:
    store = RatingStore("/tmp/unused/task.json")
    for name in ("simulated-gt", "Simulated-gt", "SIMULATED-x"):
        with pytest.raises(ReservedRaterName, match="reserved for the simulated rater"):
            store.put(name, "q1", "L1", 2)
    with pytest.raises(ValueError, match="simulated ratings go under a simulated-NAME"):
        store.put("alice", "q1", "L1", 2, simulated=True)


def test_a_mean_grade_is_shown_as_its_nearest_grade_ties_down() -> None:
    shown = {m: display_grade(m) for m in (0.0, 0.4, 0.5, 0.6, 1.0, 1.5, 1.6, 2.0)}
    assert shown == {0.0: 0, 0.4: 0, 0.5: 0, 0.6: 1, 1.0: 1, 1.5: 1, 1.6: 2, 2.0: 2}


def test_rate_simulate_answers_from_ground_truth_and_says_so(
    tiny_catalog: str, tmp_path: Path
) -> None:
    from tests.eval_helpers import catalog_task
    from vsearch import cli
    from vsearch.evaluation.task import read_task

    task_uri = catalog_task(tiny_catalog, str(tmp_path / "w"), ("vA",), queries=4, k=5)
    assert cli.main(["rate", "--task", task_uri, "--simulate"]) == 0
    ratings = RatingStore(task_uri).all()
    assert list(ratings) == ["simulated-ground-truth"]
    given = ratings["simulated-ground-truth"]
    task = read_task(task_uri)
    assert len(given) == task.total_results()
    for q in task.queries:
        for r in q.results["vA"]:
            expected = 2 if r.listing_id == q.listing_id else int(r.category == q.category)
            rating = given[(q.query_id, r.listing_id)]
            assert rating.grade == expected and rating.simulated
