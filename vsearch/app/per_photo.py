"""Embedding several shoppers' photos where some may be bad, and searching them view by view.

A bad photo (not an image, truncated, a decompression bomb) must not cost the good ones their
answer: ``vsearch query`` and the search service both report it per photo and answer the rest.

A photo is searched as views (issue 29): the whole frame, or the box the model's localiser found
the item in (models/export.py; ``photo_search.query_view`` picks which). ``search_views`` ranks a
listing by its best score over the views searched and names the view (and so the box) that found
it, so an app can draw it. A model without a localiser gives one view, the whole frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from vsearch.app.photo_search import PhotoSearch
from vsearch.core.images import ImageError


class _Scored(Protocol):
    @property
    def listing_id(self) -> str: ...

    @property
    def score(self) -> float: ...


H = TypeVar("H", bound=_Scored)
WHOLE_PHOTO = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class EmbeddedPhotos:
    vectors: np.ndarray  # [N, V, D]; zero rows for a bad photo
    boxes: np.ndarray  # [N, V, 4] each view's box, fractions of the photo as its viewer sees it
    errors: list[str | None]  # per photo: why it could not be used, or None

    @property
    def good(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e is None]


def embed_each(search: PhotoSearch, photos: Sequence[bytes]) -> EmbeddedPhotos:
    """Every photo's views; a bad photo gets zero vectors and its error."""
    if not photos:
        empty = np.zeros((0, 1, search.manifest.input_dim), np.float32)
        return EmbeddedPhotos(empty, np.zeros((0, 1, 4), np.float32), [])
    try:
        vectors, boxes = search.embed_views(photos)
        return EmbeddedPhotos(vectors, boxes, [None] * len(photos))
    except ImageError:
        pass  # at least one bad photo: embed one by one to tell which
    views: list[tuple[np.ndarray, np.ndarray] | None] = []
    errors: list[str | None] = []
    for photo in photos:
        try:
            one, box = search.embed_views([photo])
            views.append((one[0], box[0]))
            errors.append(None)
        except ImageError as e:
            views.append(None)
            errors.append(f"not a usable image: {e.reason}")
    shape = next((v[0].shape for v in views if v is not None), (1, search.manifest.input_dim))
    vectors = np.zeros((len(photos), *shape), np.float32)
    boxes = np.tile(np.array(WHOLE_PHOTO, np.float32), (len(photos), shape[0], 1))
    for i, view in enumerate(views):
        if view is not None:
            vectors[i], boxes[i] = view
    return EmbeddedPhotos(vectors, boxes, errors)


def search_views(
    search: Callable[[np.ndarray], list[list[H]]], vectors: np.ndarray, k: int
) -> list[list[tuple[H, int]]]:
    """Search each photo's views ([N, V, D]) with ``search`` (vectors [M, D] -> top-k hits each)
    and merge them: per photo, each listing once at its best score over the views, best first,
    with the view that scored it."""
    n, v = vectors.shape[:2]
    found = search(vectors.reshape(n * v, -1))
    out: list[list[tuple[H, int]]] = []
    for p in range(n):
        best: dict[str, tuple[H, int]] = {}
        for view in range(v):
            for hit in found[p * v + view]:
                if hit.listing_id not in best or hit.score > best[hit.listing_id][0].score:
                    best[hit.listing_id] = (hit, view)
        out.append(sorted(best.values(), key=lambda hv: -hv[0].score)[:k])
    return out
