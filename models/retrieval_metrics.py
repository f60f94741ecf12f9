"""Retrieval metrics as a shopper sees them: held-out review photos searched against the WHOLE catalog.

A shopper's photo is searched against every listing in the index, not only against the listings the
model never trained on. So the headline figures use as gallery the listing photos of every listing
(training listings included) and as queries the review photos of held-out listings; the older
"held-out gallery" figures (gallery = held-out listings only, an easier task) are kept beside them
with a ``heldout_`` prefix, because they are what earlier runs reported.

Metrics (exact inner-product search over L2-normalised embeddings; neighbours deduplicated by
listing, so a listing's best photo counts):

  review_recall_at_1 / _at_K            held-out review photo -> its listing, whole-catalog gallery
  heldout_review_recall_at_1 / _at_K    the same, gallery = held-out listings only
  trained_review_recall_at_1 / _at_K    a TRAINING listing's review photo -> its listing, whole
                                        catalog (what the model fits; held-out can only follow)
  category_precision_at_K               held-out listing photo -> K nearest photos of *other*
  color_precision_at_K                  listings (whole catalog): share with the same category /
                                        colour (colour only where both are labelled)
  heldout_category_precision_at_K, heldout_color_precision_at_K   gallery = held-out listings

Pure numpy: the training callback, the gate, the benchmarks and the demo all call this one function.
"""

from __future__ import annotations

import numpy as np

PRECISION_LABELS = ("category", "color")


def _review_recall(
    emb: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    gallery: np.ndarray,
    ks: tuple[int, ...],
) -> dict[int, float]:
    order = gallery[np.argsort(ids[gallery], kind="stable")]
    listings, starts = np.unique(ids[order], return_index=True)
    scores = emb[queries] @ emb[order].T  # [Q, G]
    per_listing = np.maximum.reduceat(scores, starts, axis=1)  # best photo of each listing
    own = np.clip(np.searchsorted(listings, ids[queries]), 0, len(listings) - 1)
    known = listings[own] == ids[queries]  # a query whose listing has no photo cannot be found
    own_score = per_listing[np.arange(len(queries)), own]
    rank = (per_listing > own_score[:, None]).sum(axis=1)  # 0 = first
    return {k: float(np.mean((rank < k) & known)) for k in ks}


def _label_precision(
    emb: np.ndarray,
    ids: np.ndarray,
    labels: dict[str, np.ndarray],
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
) -> dict[str, float]:
    g = emb[queries] @ emb[gallery].T
    g[ids[queries][:, None] == ids[gallery][None, :]] = -np.inf  # other listings only
    kk = min(k, max(len(gallery) - 1, 1))
    nn = gallery[np.argpartition(-g, kk - 1, axis=1)[:, :kk]]
    out = {}
    for label in PRECISION_LABELS:
        lab = labels[label]
        both = (lab[queries][:, None] >= 0) & (lab[nn] >= 0)
        same = (lab[queries][:, None] == lab[nn]) & both
        rows = both.sum(axis=1) > 0
        out[label] = float(np.mean(same[rows].sum(1) / both[rows].sum(1))) if rows.any() else 0.0
    return out


def shopper_metrics(
    emb: np.ndarray,
    listing_ids: np.ndarray,
    is_review: np.ndarray,
    held_out: np.ndarray,
    labels: dict[str, np.ndarray],
    k: int = 10,
) -> dict[str, float]:
    """All retrieval metrics for one set of images (see the module docstring).

    ``emb`` [N, D] L2-normalised; per image: ``listing_ids`` (str), ``is_review`` (bool),
    ``held_out`` (bool: its listing is in the eval split), ``labels[name]`` (int, -1 = missing).
    Review photos of training listings are queries of the ``trained_`` figures only, never
    gallery items.
    """
    emb = np.asarray(emb, np.float32)
    ids = np.asarray(listing_ids)
    is_review, held_out = np.asarray(is_review, bool), np.asarray(held_out, bool)
    whole = np.flatnonzero(~is_review)
    heldout_gallery = np.flatnonzero(~is_review & held_out)
    queries = np.flatnonzero(is_review & held_out)
    if len(heldout_gallery) == 0:
        raise ValueError("the eval split has no listing photos: cannot measure retrieval")
    out: dict[str, float] = {
        "eval_images": float(np.sum(held_out)),
        "eval_reviews": float(len(queries)),
        "gallery_listings": float(len(np.unique(ids[whole]))),
    }
    if len(queries):
        for prefix, gallery in (("", whole), ("heldout_", heldout_gallery)):
            for kk, value in _review_recall(emb, ids, queries, gallery, (1, k)).items():
                out[f"{prefix}review_recall_at_{kk}"] = value
    train_queries = np.flatnonzero(is_review & ~held_out)
    if len(train_queries):
        for kk, value in _review_recall(emb, ids, train_queries, whole, (1, k)).items():
            out[f"trained_review_recall_at_{kk}"] = value
    for prefix, gallery in (("", whole), ("heldout_", heldout_gallery)):
        if len(gallery) > 1:
            precision = _label_precision(emb, ids, labels, heldout_gallery, gallery, k)
            for label, value in precision.items():
                out[f"{prefix}{label}_precision_at_{k}"] = value
    return out
