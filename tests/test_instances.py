"""The bounded instance head: reviewed listings first, a stable sample of the rest, never more."""

from __future__ import annotations

from models.instances import instance_classes


def test_reviewed_listings_first_then_a_stable_sample() -> None:
    ids = [f"L{i:04d}" for i in range(1000)]
    reviewed = ids[::10]  # 100 listings with review photos
    chosen = instance_classes(ids, reviewed, max_classes=300, seed=3)
    assert len(chosen) == 300 and chosen == sorted(chosen)
    assert set(reviewed) <= set(chosen)
    # Stable: the same inputs in another order give the same classes; another seed another sample.
    assert instance_classes(list(reversed(ids)), reviewed, 300, seed=3) == chosen
    assert instance_classes(ids, reviewed, 300, seed=4) != chosen


def test_small_catalogs_keep_every_listing() -> None:
    ids = ["a", "b", "c"]
    assert instance_classes(ids, [], max_classes=50_000) == ids


def test_more_reviewed_listings_than_classes() -> None:
    ids = [f"L{i}" for i in range(100)]
    chosen = instance_classes(ids, ids[:60], max_classes=40)
    assert len(chosen) == 40 and set(chosen) <= set(ids[:60])
