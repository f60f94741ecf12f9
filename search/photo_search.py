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

# The localiser's best box is searched instead of the whole photo when it is at least this sure
# and the item is small in the frame; a photo the item fills (a catalog photo, a close-up) is
# searched whole, so a listing's own photo still finds it first. Measured on the phone catalog
# (BENCHMARKS.md, "Buyer photos"): the best box found the listing in the top 10 for 0.271 of
# held-out buyer photos (side < 0.6, 0.7 or 0.8: the same; score 0.5: 0.17), the best score over
# the photo and its 3 boxes for 0.236 (boxes around the room's other products win wrong
# listings), the whole photo for 0.131.
MIN_BOX_SCORE = 0.3
MAX_BOX_SIDE = 0.7  # the box's longer side, as a fraction of the frame's
# A photo whose whole view matches an indexed photo this closely (cosine, in the index's space) is
# a catalog photo or a copy of one: it is searched whole whatever the localiser says, so a
# listing's own photo always finds it first, even where a weak localiser boxes part of it (a
# one-epoch model did, in tests/test_dag.py). Identical bytes score 1.0; no held-out phone
# photo's whole view came near (BENCHMARKS.md, "Buyer photos").
DUPLICATE_SCORE = 0.99


def query_view(
    box_scores: np.ndarray, frame_boxes: np.ndarray, whole_best: np.ndarray | None = None
) -> np.ndarray:
    """Per photo, the view to search: 1 (the localiser's best box) when its score is at least
    ``MIN_BOX_SCORE`` and its longer side under ``MAX_BOX_SIDE`` of the frame, else 0 (the whole
    photo; always so for a model without a localiser). ``whole_best``: each whole view's best
    score against the index; at least ``DUPLICATE_SCORE`` keeps the whole photo."""
    scores, boxes = np.asarray(box_scores), np.asarray(frame_boxes)
    if scores.shape[1] < 2:
        return np.zeros(len(scores), np.int64)
    side = np.maximum(boxes[:, 1, 2] - boxes[:, 1, 0], boxes[:, 1, 3] - boxes[:, 1, 1])
    boxed = (scores[:, 1] >= MIN_BOX_SCORE) & (side < MAX_BOX_SIDE)
    if whole_best is not None:
        boxed &= np.asarray(whole_best) < DUPLICATE_SCORE
    return np.where(boxed, 1, 0).astype(np.int64)


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

    def embed_views(self, photos: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each photo as the view search uses (``query_view``): (vectors [N, D], the view's box
        [N, 4] in fractions of the photo as its viewer sees it, [0, 0, 1, 1] = the whole photo;
        the localiser's best box score [N], how sure it is that the photo shows an item at all,
        NaN for a model without a localiser)."""
        views = self.embedder.embed_query(photos)
        if views.embeddings.shape[-1] != self.manifest.input_dim:
            raise ValueError(
                f"model {self.manifest.model_version} gives {views.embeddings.shape[-1]}-dim "
                f"embeddings, the index takes {self.manifest.input_dim}"
            )
        pick = query_view(views.box_scores, views.frame_boxes)
        if pick.any():  # a boxed photo that copies a catalog photo is searched whole after all
            best, _, _ = self.searcher.search_raw(views.embeddings[pick == 1, 0], 1)
            whole_best = np.full(len(pick), -np.inf, np.float32)
            whole_best[pick == 1] = best[:, 0]
            pick = query_view(views.box_scores, views.frame_boxes, whole_best)
        rows = np.arange(len(pick))
        item = (
            views.box_scores[:, 1] if views.box_scores.shape[1] > 1 else np.full(len(pick), np.nan)
        )
        return (
            views.embeddings[rows, pick],
            views.photo_boxes[rows, pick],
            np.asarray(item, np.float32),
        )

    def embed(self, photos: Sequence[bytes]) -> np.ndarray:
        """Embed photos as search does, with the index's model (catalog photos' preprocessing)."""
        return self.embed_views(photos)[0]

    def search(self, photos: Sequence[bytes], k: int = 20) -> list[list[Hit]]:
        if not photos:
            return []
        return self.searcher.search_vectors(self.embed(photos), k)
