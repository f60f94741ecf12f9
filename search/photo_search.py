"""Search by photo: the published index plus the model version its manifest names.

The index layer knows vectors, the model layer knows networks; this is where the two meet. The
embedder is always the one named in the index manifest, so a query photo can never be embedded by
a model other than the one that embedded the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core import paths
from index.searcher import Hit, Searcher
from models.artifact import Embedder
from search.views import search_views, view_offsets


class PhotoSearch:
    """``search(photos, k)``: raw encoded image bytes (JPEG, PNG, ...) -> top-k listings each.

    Photos are decoded by the safe Pillow decoder (an uploaded photo is untrusted: bombs, CMYK,
    EXIF orientation) and fed to the model's pixel signature, exactly as the embed job does.
    """

    def __init__(self, searcher: Searcher, workdir: str, embedder: Embedder | None = None) -> None:
        """``embedder``: an already loaded model of the manifest's version (else it is loaded)."""
        self.searcher = searcher
        version = searcher.manifest.model_version
        if embedder is not None and embedder.uri != paths.embedder_dir(workdir, version):
            raise ValueError(f"embedder {embedder.uri} is not the index's model {version}")
        self.embedder = embedder or Embedder.open(workdir, version)

    @classmethod
    def open(cls, workdir: str, **kwargs: Any) -> PhotoSearch:
        """The index that ``WORKDIR/indexes/CURRENT`` points at, with its model."""
        return cls(Searcher.open(workdir, **kwargs), workdir)

    def close(self) -> None:
        self.searcher.close()

    def __enter__(self) -> PhotoSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def manifest(self) -> Any:
        return self.searcher.manifest

    def embed_views(
        self, photos: Sequence[bytes]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each photo's views as search uses them (``search.views``): (vectors [N, V, D]; each
        view's box [N, V, 4] in fractions of the photo as its viewer sees it, [0, 0, 1, 1] = the
        whole photo; offsets [N, V], ``views.NOT_SEARCHED`` for a view not searched; the
        localiser's best box score [N], how sure it is that the photo shows an item at all, NaN
        for a model without a localiser)."""
        views = self.embedder.embed_query(photos)
        if views.embeddings.shape[-1] != self.manifest.input_dim:
            raise ValueError(
                f"model {self.manifest.model_version} gives {views.embeddings.shape[-1]}-dim "
                f"embeddings, the index takes {self.manifest.input_dim}"
            )
        offsets = view_offsets(views.box_scores, views.frame_boxes)
        item = (
            views.box_scores[:, 1]
            if views.box_scores.shape[1] > 1
            else np.full(len(offsets), np.nan)
        )
        return views.embeddings, views.photo_boxes, offsets, np.asarray(item, np.float32)

    def search(self, photos: Sequence[bytes], k: int = 20) -> list[list[Hit]]:
        if not photos:
            return []
        vectors, _, offsets, _ = self.embed_views(photos)
        found = search_views(self.searcher.search_vectors, vectors, offsets, k)
        return [[hit for hit, _ in hits] for hits in found]
