"""Embedding several photos where some may be bad: one batch call, split only when it fails.

A bad photo (not an image, truncated, a decompression bomb) must not cost the good ones their
answer: ``vsearch query`` and the search service both report it per photo and answer the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vsearch.app.photo_search import PhotoSearch
from vsearch.core.images import ImageError


def embed_each(search: PhotoSearch, photos: Sequence[bytes]) -> tuple[np.ndarray, list[str | None]]:
    """(embeddings [N, D] with zero rows for bad photos, the error of each photo or None)."""
    if not photos:
        return np.zeros((0, search.manifest.input_dim), np.float32), []
    try:
        return search.embed(photos), [None] * len(photos)
    except ImageError:
        pass  # at least one bad photo: embed one by one to tell which
    out = np.zeros((len(photos), search.manifest.input_dim), np.float32)
    errors: list[str | None] = [None] * len(photos)
    for i, photo in enumerate(photos):
        try:
            out[i] = search.embed([photo])[0]
        except ImageError as e:
            errors[i] = f"not a usable image: {e.reason}"
    return out, errors
