"""Embedding several shoppers' photos where some may be bad: one batch call, split only when it fails.

A bad photo (not an image, truncated, a decompression bomb) must not cost the good ones their
answer: ``vsearch query`` and the search service both report it per photo and answer the rest.
Each photo is embedded as the view search uses (the whole photo, or the box the model's
localiser found the item in: ``photo_search.query_view``), and its box is kept so that an
answer can say which part of the photo was searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.images import ImageError
from search.photo_search import PhotoSearch

WHOLE_PHOTO = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class EmbeddedPhotos:
    vectors: np.ndarray  # [N, D]; a zero row for a bad photo
    boxes: np.ndarray  # [N, 4] the part searched, fractions of the photo as its viewer sees it
    errors: list[str | None]  # per photo: why it could not be used, or None
    # [N] the localiser's confidence that the photo shows an item (NaN: no localiser, bad photo)
    item_scores: np.ndarray

    @property
    def good(self) -> list[int]:
        return [i for i, e in enumerate(self.errors) if e is None]


def embed_each(search: PhotoSearch, photos: Sequence[bytes]) -> EmbeddedPhotos:
    """Every photo's vector and box; a bad photo gets a zero vector and its error."""
    dim = search.manifest.input_dim
    if not photos:
        empty = np.zeros(0, np.float32)
        return EmbeddedPhotos(
            np.zeros((0, dim), np.float32), np.zeros((0, 4), np.float32), [], empty
        )
    try:
        vectors, boxes, items = search.embed_views(photos)
        return EmbeddedPhotos(vectors, boxes, [None] * len(photos), items)
    except ImageError:
        pass  # at least one bad photo: embed one by one to tell which
    vectors = np.zeros((len(photos), dim), np.float32)
    boxes = np.tile(np.array(WHOLE_PHOTO, np.float32), (len(photos), 1))
    errors: list[str | None] = [None] * len(photos)
    items = np.full(len(photos), np.nan, np.float32)
    for i, photo in enumerate(photos):
        try:
            one, box, item = search.embed_views([photo])
            vectors[i], boxes[i], items[i] = one[0], box[0], item[0]
        except ImageError as e:
            errors[i] = f"not a usable image: {e.reason}"
    return EmbeddedPhotos(vectors, boxes, errors, items)
