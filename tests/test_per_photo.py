"""A shopper's photo searched as views (the whole frame, then the localiser's boxes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsearch.app.per_photo import embed_each, search_views
from vsearch.core.images import ImageError


@dataclass(frozen=True)
class _Hit:
    listing_id: str
    score: float


def test_a_listing_ranks_by_its_best_view_and_names_that_view() -> None:
    # One photo, two views: the whole frame finds A and B weakly, a box finds B strongly.
    answers = {
        0: [_Hit("A", 0.5), _Hit("B", 0.4)],
        1: [_Hit("B", 0.9), _Hit("C", 0.3)],
        2: [_Hit("D", 0.7)],  # the second photo's only view
        3: [],
    }
    vectors = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)

    def search(flat: np.ndarray) -> list[list[_Hit]]:
        assert flat.shape == (4, 3)  # every view of every photo, in one call
        return [answers[i] for i in range(len(flat))]

    merged = search_views(search, vectors, k=2)
    assert [(h.listing_id, h.score, view) for h, view in merged[0]] == [
        ("B", 0.9, 1),
        ("A", 0.5, 0),
    ]
    assert [(h.listing_id, view) for h, view in merged[1]] == [("D", 0)]


class _Search:
    """A PhotoSearch stand-in: two views per good photo, ImageError for a bad one."""

    class manifest:  # noqa: N801
        input_dim = 3

    def embed_views(self, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        if any(p == b"bad" for p in photos):
            raise ImageError("not an image (unknown format)")
        n = len(photos)
        boxes = np.tile(np.array([[0, 0, 1, 1], [0.1, 0.2, 0.5, 0.6]], np.float32), (n, 1, 1))
        return np.ones((n, 2, 3), np.float32), boxes


def test_a_bad_photo_costs_only_its_own_answer() -> None:
    out = embed_each(_Search(), [b"ok", b"bad", b"ok"])  # type: ignore[arg-type]
    assert out.good == [0, 2] and out.errors[1] and "not a usable image" in out.errors[1]
    assert out.vectors.shape == (3, 2, 3) and not out.vectors[1].any() and out.vectors[0].all()
    np.testing.assert_allclose(out.boxes[2, 1], [0.1, 0.2, 0.5, 0.6])


def test_the_localisers_box_is_searched_only_when_it_is_sure_and_the_item_small() -> None:
    from vsearch.app.photo_search import MIN_BOX_SCORE, query_view

    whole, small, big = [0, 0, 1, 1], [0.1, 0.2, 0.4, 0.5], [0.05, 0.05, 0.95, 0.9]
    scores = np.array([[1.0, 0.9], [1.0, MIN_BOX_SCORE - 0.01], [1.0, 0.9]])
    boxes = np.array([[whole, small], [whole, small], [whole, big]])
    # The small, sure box; an unsure box: the photo; an item that fills the photo: the photo.
    assert query_view(scores, boxes).tolist() == [1, 0, 0]
    assert query_view(np.ones((3, 1)), np.ones((3, 1, 4))).tolist() == [0, 0, 0]  # no localiser
