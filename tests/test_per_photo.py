"""A shopper's photo embedded as the views search uses (the whole photo or the localiser's boxes),
and how the views' hits become one ranking."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.images import ImageError
from search.per_photo import embed_each
from search.views import BOX_PRIOR, NOT_SEARCHED, search_views, view_offsets

WHOLE, SMALL, OTHER = [0, 0, 1, 1], [0.1, 0.2, 0.4, 0.5], [0.6, 0.5, 0.9, 0.8]


class _Search:
    """A PhotoSearch stand-in: two boxes searched for a good photo, ImageError for a bad one."""

    class manifest:  # noqa: N801
        input_dim = 3

    def embed_views(
        self, photos: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if any(p == b"bad" for p in photos):
            raise ImageError("not an image (unknown format)")
        n = len(photos)
        boxes = np.tile(np.array([WHOLE, SMALL, OTHER], np.float32), (n, 1, 1))
        offsets = np.tile([NOT_SEARCHED, -0.05, -0.2], (n, 1))
        return np.ones((n, 3, 3), np.float32), boxes, offsets, np.full(n, 0.8, np.float32)


def test_a_bad_photo_costs_only_its_own_answer() -> None:
    out = embed_each(_Search(), [b"ok", b"bad", b"ok"])  # type: ignore[arg-type]
    assert out.good == [0, 2] and out.errors[1] and "not a usable image" in out.errors[1]
    assert out.vectors.shape == (3, 3, 3) and not out.vectors[1].any() and out.vectors[0].all()
    np.testing.assert_allclose(out.boxes[2, 1], SMALL)
    assert out.boxes[1].tolist() == [WHOLE] * 3  # nothing was searched: the whole photo
    assert not np.isfinite(out.offsets[1]).any()  # and nothing of it will be
    assert out.item_scores[0] == out.item_scores[2] == np.float32(0.8) and np.isnan(
        out.item_scores[1]
    )


def test_the_photo_is_always_searched_and_the_boxes_only_when_sure_and_the_item_small() -> None:
    from search.views import MIN_BOX_SCORE

    big = [0.05, 0.05, 0.95, 0.9]
    scores = np.array([[1.0, 0.9, 0.2], [1.0, MIN_BOX_SCORE - 0.01, 0.2], [1.0, 0.9, 0.2]])
    boxes = np.array([[WHOLE, SMALL, OTHER], [WHOLE, SMALL, OTHER], [WHOLE, big, OTHER]])
    got = view_offsets(scores, boxes)
    # The small, sure box: the photo and both boxes, the best box keeping its cosine, the
    # doubtful one lowered by how much less sure it is; an unsure best box, or an item that
    # fills the photo: the photo alone.
    np.testing.assert_allclose(got[0], [0.0, 0.0, BOX_PRIOR * np.log(0.2 / 0.9)])
    assert got[1].tolist() == got[2].tolist() == [0.0, NOT_SEARCHED, NOT_SEARCHED]
    no_localiser = view_offsets(np.ones((3, 1)), np.ones((3, 1, 4)))
    assert no_localiser.tolist() == [[0.0]] * 3


@dataclass(frozen=True)
class _Hit:
    listing_id: str
    score: float


def test_each_listing_is_ranked_by_its_best_view_and_keeps_that_view() -> None:
    # One photo, three views: the whole photo is not searched; box 1 (offset -0.05) sees A and
    # B; box 2 (offset -0.3, a doubtful box on another product) sees C very well and A better.
    vectors = np.eye(3, dtype=np.float32)[None]  # view v's vector is the unit vector v
    cosines = {1: {"A": 0.80, "B": 0.70}, 2: {"C": 0.95, "A": 0.90}}
    searched: list[int] = []

    def search(x: np.ndarray, k: int) -> list[list[_Hit]]:
        out = []
        for row in x:
            view = int(np.argmax(row))
            searched.append(view)
            hits = sorted(cosines[view].items(), key=lambda kv: -kv[1])[:k]
            out.append([_Hit(lid, s) for lid, s in hits])
        return out

    found = search_views(search, vectors, np.array([[NOT_SEARCHED, -0.05, -0.3]]), 3)
    assert searched == [1, 2]  # every searched view, and only those
    ranked = [(h.listing_id, round(h.score, 6), view) for h, view in found[0]]
    # A: max(0.80 - 0.05, 0.90 - 0.3) = 0.75 from box 1; B 0.65; C 0.95 - 0.3 = 0.65 from box 2.
    assert ranked[0] == ("A", 0.75, 1)
    assert {r[0]: r[2] for r in ranked} == {"A": 1, "B": 1, "C": 2}
    assert [r[1] for r in ranked] == sorted((r[1] for r in ranked), reverse=True)
    assert search_views(search, vectors, np.array([[NOT_SEARCHED] * 3]), 3) == [[]]


def test_a_catalog_photo_finds_its_own_listing_first_whatever_its_boxes_match() -> None:
    # The whole photo is the listing's own photo (cosine 1.0); a box matches another listing
    # almost as well: the whole view wins, as it is searched at no cost.
    vectors = np.eye(2, dtype=np.float32)[None]
    cosines = {0: [_Hit("OWN", 1.0), _Hit("B", 0.5)], 1: [_Hit("C", 0.99), _Hit("OWN", 0.7)]}

    def search(x: np.ndarray, k: int) -> list[list[_Hit]]:
        return [cosines[int(np.argmax(row))][:k] for row in x]

    offsets = view_offsets(np.array([[1.0, 0.9]]), np.array([[WHOLE, SMALL]]))
    found = search_views(search, vectors, offsets, 2)
    assert [(h.listing_id, v) for h, v in found[0]] == [("OWN", 0), ("C", 1)]
