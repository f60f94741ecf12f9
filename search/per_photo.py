"""Embedding several shoppers' photos where some may be bad: one batch call, split only when it fails.

A bad photo (not an image, truncated, a decompression bomb) must not cost the good ones their
answer: ``vsearch query`` and the search service both report it per photo and answer the rest.
Each photo is embedded as the views search uses (the whole photo, or the boxes the model's
localiser found the item in: ``search.views``), and each view's box is kept so that an answer
can say which part of the photo found each listing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.images import ImageError
from search.photo_search import PhotoSearch
from search.views import NOT_SEARCHED, H, search_views

WHOLE_PHOTO = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class EmbeddedPhotos:
    vectors: np.ndarray  # [N, V, D] per photo and view; zeros for a bad photo
    boxes: np.ndarray  # [N, V, 4] each view's part of the photo, fractions as its viewer sees it
    offsets: np.ndarray  # [N, V] what each view adds to a cosine (search.views.view_offsets)
    errors: list[str | None]  # per photo: why it could not be used, or None
    # [N] the localiser's confidence that the photo shows an item (NaN: no localiser, bad photo)
    item_scores: np.ndarray

    @property
    def good(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e is None]

    def search(
        self, search: Callable[[np.ndarray, int], Sequence[Sequence[H]]], rows: list[int], k: int
    ) -> list[list[tuple[H, list[float]]]]:
        """Photos ``rows``' top-k listings through ``search`` (``views.search_views``), each hit
        with the box of the view that found it (rounded photo fractions)."""
        found = search_views(search, self.vectors[rows], self.offsets[rows], k)
        return [
            [(hit, self.boxes[i, v].round(4).tolist()) for hit, v in hits]
            for i, hits in zip(rows, found, strict=True)
        ]

    def search_hits(
        self, search: Callable[[np.ndarray, int], Sequence[Sequence[H]]], rows: list[int], k: int
    ) -> list[list[H]]:
        """``search`` without the boxes: each photo's top-k hits, best first."""
        found = search_views(search, self.vectors[rows], self.offsets[rows], k)
        return [[hit for hit, _ in hits] for hits in found]


def embed_each(search: PhotoSearch, photos: Sequence[bytes]) -> EmbeddedPhotos:
    """Every photo's views; a bad photo gets zero vectors, no searched view and its error."""
    dim = search.manifest.input_dim
    if not photos:
        return _bad(0, 1, dim, [])
    try:
        return _good(search, photos)
    except ImageError:
        pass  # at least one bad photo: embed one by one to tell which
    ones: list[tuple[np.ndarray, ...] | None] = []
    errors: list[str | None] = []
    for photo in photos:
        try:
            ones.append(search.embed_views([photo]))
            errors.append(None)
        except ImageError as e:
            ones.append(None)
            errors.append(f"not a usable image: {e.reason}")
    views = max((one[0].shape[1] for one in ones if one is not None), default=1)
    out = _bad(len(photos), views, dim, errors)
    for i, one in enumerate(ones):
        if one is not None:
            out.vectors[i], out.boxes[i], out.offsets[i], out.item_scores[i] = (x[0] for x in one)
    return out


def _good(search: PhotoSearch, photos: Sequence[bytes]) -> EmbeddedPhotos:
    vectors, boxes, offsets, items = search.embed_views(photos)
    return EmbeddedPhotos(vectors, boxes, offsets, [None] * len(photos), items)


def _bad(n: int, views: int, dim: int, errors: list[str | None]) -> EmbeddedPhotos:
    """``n`` photos with nothing searched yet: the slots ``embed_each`` fills."""
    return EmbeddedPhotos(
        np.zeros((n, views, dim), np.float32),
        np.tile(np.array(WHOLE_PHOTO, np.float32), (n, views, 1)),
        np.full((n, views), NOT_SEARCHED),
        errors,
        np.full(n, np.nan, np.float32),
    )
