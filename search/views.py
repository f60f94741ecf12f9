"""A query photo's views, and how their hits become one ranking.

A model with a localiser embeds a shopper's photo as several views: the whole photo, then the
localiser's best boxes (``models/export.py``, ``QUERY_BOXES``). ``view_offsets`` says which views
a photo is searched with (the whole photo always, the boxes when the localiser is sure and the
item small) and what each adds to a cosine; ``search_views`` searches them all in one
call and ranks each listing by its best view (cosine + offset), keeping the view that found it so
that an answer can draw its box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import numpy as np

# The whole photo is always searched (a photo the item fills, a catalog photo: its own listing
# still comes first, at cosine 1.0 for identical bytes); the localiser's boxes are searched too
# when its best box is at least this sure and the item small in the frame. Measured on the
# phone, studio and bazaar catalogs (BENCHMARKS.md, "Buyer photos"): searching the best box
# instead of the photo lost 0.135 of hit@10 on bazaar's buyer photos (2 boxes: 0.071), where the
# item fills most of a cluttered frame; with the photo beside them 0.015, and studio gained 0.026.
MIN_BOX_SCORE = 0.3
MAX_BOX_SIDE = 0.7  # the best box's longer side, as a fraction of the frame's
# A box's hits score cosine + BOX_PRIOR * ln(its localiser score / the best box's): the best box
# keeps its cosine (so do scores and no-match thresholds of models with one box), a box half as
# sure loses ~0.07, one a tenth as sure ~0.23, so a box on another product in the room must match
# far better to win. Measured on the phone catalog at 160 px (held-out / all buyer photos
# hit@10, 2 boxes searched without the photo): 0.05: 0.568 / 0.654, 0.1: 0.563 / 0.656, 0.2: 0.553 / 0.656; 0 (best
# cosine over 3 boxes): 0.492 / 0.597; the best box alone: 0.533 / 0.644.
BOX_PRIOR = 0.1
_MIN_PROB = 1e-3  # a box score of 0 would give -inf: such a box is merely very unlikely

NOT_SEARCHED = -np.inf


def view_offsets(box_scores: np.ndarray, frame_boxes: np.ndarray) -> np.ndarray:
    """Per photo and view [N, V] (view 0 the whole photo, then the boxes): what a view adds to
    its cosines, ``NOT_SEARCHED`` for a view not searched. The whole photo: always, 0. The boxes
    (each ``BOX_PRIOR * ln(score / best score)``: 0 for the best box) when the best box scores
    at least ``MIN_BOX_SCORE`` and its longer side is under ``MAX_BOX_SIDE`` of the frame; never
    for a model without a localiser."""
    scores, boxes = np.asarray(box_scores, np.float64), np.asarray(frame_boxes)
    out = np.full(scores.shape, NOT_SEARCHED, np.float64)
    out[:, 0] = 0.0
    if scores.shape[1] < 2:
        return out
    side = np.maximum(boxes[:, 1, 2] - boxes[:, 1, 0], boxes[:, 1, 3] - boxes[:, 1, 1])
    boxed = (scores[:, 1] >= MIN_BOX_SCORE) & (side < MAX_BOX_SIDE)
    sure = np.maximum(scores[:, 1:], _MIN_PROB)
    out[boxed, 1:] = BOX_PRIOR * np.log(sure[boxed] / sure[boxed, :1])
    return out


class _Hit(Protocol):
    @property
    def listing_id(self) -> str: ...
    @property
    def score(self) -> float: ...


H = TypeVar("H", bound=_Hit)


def search_views(
    search: Callable[[np.ndarray, int], Sequence[Sequence[H]]],
    vectors: np.ndarray,
    offsets: np.ndarray,
    k: int,
) -> list[list[tuple[H, int]]]:
    """Per photo, its top-k listings as (hit, view): ``search`` (vectors [M, D], k -> top-k hits
    each, best image per listing) runs once over every searched view of ``vectors`` [N, V, D];
    a hit's score becomes its cosine plus its view's offset (``view_offsets`` [N, V]), and a
    listing keeps its best. Exact: a listing in the merged top k is in its best view's top k."""
    rows = [(i, v) for i in range(len(vectors)) for v in np.flatnonzero(np.isfinite(offsets[i]))]
    if not rows:
        return [[] for _ in range(len(vectors))]
    found = search(np.stack([vectors[i, v] for i, v in rows]), k)
    best: list[dict[str, tuple[H, int]]] = [{} for _ in range(len(vectors))]
    for (i, v), hits in zip(rows, found, strict=True):
        for h in hits:
            scored = _rescored(h, float(h.score) + float(offsets[i, v]))
            held = best[i].get(h.listing_id)
            if held is None or scored.score > held[0].score:
                best[i][h.listing_id] = (scored, int(v))
    return [sorted(b.values(), key=lambda hv: -hv[0].score)[:k] for b in best]


def _rescored(hit: Any, score: float) -> Any:
    return hit if score == hit.score else replace(hit, score=score)
