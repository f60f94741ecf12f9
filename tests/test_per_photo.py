"""A shopper's photo embedded as the view search uses (the whole photo or the localiser's box)."""

from __future__ import annotations

import numpy as np

from core.images import ImageError
from search.per_photo import embed_each


class _Search:
    """A PhotoSearch stand-in: the localiser's box searched for a good photo, ImageError for a bad one."""

    class manifest:  # noqa: N801
        input_dim = 3

    def embed_views(self, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if any(p == b"bad" for p in photos):
            raise ImageError("not an image (unknown format)")
        n = len(photos)
        boxes = np.tile(np.array([0.1, 0.2, 0.5, 0.6], np.float32), (n, 1))
        return np.ones((n, 3), np.float32), boxes, np.full(n, 0.8, np.float32)


def test_a_bad_photo_costs_only_its_own_answer() -> None:
    out = embed_each(_Search(), [b"ok", b"bad", b"ok"])  # type: ignore[arg-type]
    assert out.good == [0, 2] and out.errors[1] and "not a usable image" in out.errors[1]
    assert out.vectors.shape == (3, 3) and not out.vectors[1].any() and out.vectors[0].all()
    np.testing.assert_allclose(out.boxes[2], [0.1, 0.2, 0.5, 0.6])
    assert out.boxes[1].tolist() == [0, 0, 1, 1]  # nothing was searched: the whole photo
    assert out.item_scores[0] == out.item_scores[2] == np.float32(0.8) and np.isnan(
        out.item_scores[1]
    )


def test_the_localisers_box_is_searched_only_when_it_is_sure_and_the_item_small() -> None:
    from search.photo_search import MIN_BOX_SCORE, query_view

    whole, small, big = [0, 0, 1, 1], [0.1, 0.2, 0.4, 0.5], [0.05, 0.05, 0.95, 0.9]
    scores = np.array([[1.0, 0.9], [1.0, MIN_BOX_SCORE - 0.01], [1.0, 0.9]])
    boxes = np.array([[whole, small], [whole, small], [whole, big]])
    # The small, sure box; an unsure box: the photo; an item that fills the photo: the photo.
    assert query_view(scores, boxes).tolist() == [1, 0, 0]
    assert query_view(np.ones((3, 1)), np.ones((3, 1, 4))).tolist() == [0, 0, 0]  # no localiser


def test_a_copy_of_a_catalog_photo_is_searched_whole_whatever_the_localiser_says() -> None:
    from search.photo_search import DUPLICATE_SCORE, query_view

    small = [[0, 0, 1, 1], [0.1, 0.2, 0.4, 0.5]]
    scores, boxes = np.array([[1.0, 0.9]] * 2), np.array([small, small])
    # The first photo's whole view is (nearly) an indexed photo: searched whole.
    whole_best = np.array([DUPLICATE_SCORE + 0.005, DUPLICATE_SCORE - 0.05])
    assert query_view(scores, boxes, whole_best).tolist() == [0, 1]
