"""Stratified query sampling: every category represented, rare ones included, fixed by the seed."""

from __future__ import annotations

from collections import Counter

import pytest

from vsearch.evaluation.sample import Candidate, allocate, draw, strata_level


def _catalog() -> list[Candidate]:
    out = []
    # One big category, three rare ones (one listing each), reviews only in the big one.
    for i in range(100):
        out.append(Candidate(f"big/{i}.jpg", "listing", f"B{i}", "home/decor/vases"))
        out.append(Candidate(f"big/r{i}.jpg", "review", f"B{i}", "home/decor/vases"))
    for j, cat in enumerate(("art/prints/maps", "toys/dolls/wood", "home/decor/clocks")):
        out.append(Candidate(f"rare/{j}.jpg", "listing", f"R{j}", cat))
    return out


def test_every_category_gets_a_query_and_big_ones_get_more() -> None:
    drawn = draw(_catalog(), 10, seed=0, review_fraction=0.5)
    per = Counter(c.category for c in drawn)
    assert len(drawn) == 10
    assert per == {
        "home/decor/vases": 7,
        "art/prints/maps": 1,
        "toys/dolls/wood": 1,
        "home/decor/clocks": 1,
    }
    big = [c for c in drawn if c.category == "home/decor/vases"]
    assert Counter(c.kind for c in big) == {"review": 4, "listing": 3}  # round(7 * 0.5) reviews


def test_same_seed_same_queries_other_seed_other_queries() -> None:
    a = draw(_catalog(), 10, seed=0, review_fraction=0.5)
    assert a == draw(_catalog(), 10, seed=0, review_fraction=0.5)
    assert a != draw(_catalog(), 10, seed=1, review_fraction=0.5)


def test_more_categories_than_queries_stratifies_one_level_up() -> None:
    cats = [f"top{t}/mid/leaf{i}" for t in range(3) for i in range(5)]
    assert strata_level(cats, 15) == 3
    assert strata_level(cats, 14) == 2  # 15 leaves do not fit; the 3 "topN/mid" do
    with pytest.raises(ValueError, match="at least 3"):
        strata_level(cats, 2)
    drawn = draw([Candidate(f"{c}.jpg", "listing", c, c) for c in cats], 4, 0, 0.5)
    assert {c.category.split("/")[0] for c in drawn} == {"top0", "top1", "top2"}


def test_allocation_never_exceeds_what_a_stratum_has() -> None:
    alloc = allocate({"a": 100, "b": 1}, {"a": 100, "b": 1}, 50)
    assert alloc == {"a": 49, "b": 1}
    assert allocate({"a": 2, "b": 1}, {"a": 2, "b": 1}, 50) == {"a": 2, "b": 1}
