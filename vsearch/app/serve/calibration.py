"""The "no good match" threshold, calibrated per index on held-out buyer review photos.

Review photos are what shoppers send (phone photos of a product) and are never in the index.
For each sampled review photo whose listing is indexed:

* its *match* score is the score of its own listing (when the listing is in the top 50);
* its *non-match* score is the best score of any *other* listing: exactly what the service
  would return for a photo of a product the catalog does not sell.

The threshold is the score that best separates the two (maximises true-match rate minus
false-accept rate, Youden's J). A search whose best hit scores below it answers
``no_match: true``. The photos, counts and both rates are kept for ``/readyz`` and the health
page. With no catalog (no review photos) or fewer than ``min_photos`` usable ones the threshold is
the operator's ``--no-match-threshold``, or absent (``no_match`` is then null: unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vsearch.app.per_photo import embed_each
from vsearch.app.photo_search import PhotoSearch
from vsearch.app.serve.filtered import FilteredSearch
from vsearch.app.serve.filters import Filter
from vsearch.core import storage
from vsearch.core.catalog import Review

log = logging.getLogger(__name__)

DEPTH = 50  # listings searched per calibration photo (its own listing must be within them)


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None: not calibrated (no_match is unknown)
    method: str  # how it was obtained, in words
    photos: int = 0  # review photos used
    match_rate: float | None = None  # share of true matches at or above the threshold
    false_accept_rate: float | None = None  # share of best non-matches at or above it

    def no_match(self, best_score: float | None) -> bool | None:
        if self.threshold is None:
            return None
        return best_score is None or best_score < self.threshold


def youden_threshold(match: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """(threshold, match rate, false-accept rate) maximising match rate - false-accept rate."""
    candidates = np.unique(np.concatenate([match, other]))
    best = (float(candidates[0]), 1.0, 1.0, -1.0)
    for t in candidates:
        tpr, fpr = float((match >= t).mean()), float((other >= t).mean())
        if tpr - fpr > best[3]:
            best = (float(t), tpr, fpr, tpr - fpr)
    return best[0], best[1], best[2]


def calibrate(
    photos: PhotoSearch,
    search: FilteredSearch,
    reviews: Sequence[Review],
    max_photos: int = 200,
    min_photos: int = 20,
    fixed: float | None = None,
) -> Calibration:
    if fixed is not None:
        return Calibration(fixed, "set by the operator (--no-match-threshold)")
    if max_photos <= 0:
        return Calibration(None, "not calibrated: --calibration-photos 0")
    indexed = set(search.attributes.listing_ids.to_pylist())
    usable = sorted((r for r in reviews if r.listing_id in indexed), key=lambda r: r.review_id)
    picked = usable[:: max(1, len(usable) // max_photos)][:max_photos]
    data, owners = [], []
    for r in picked:
        try:
            data.append(storage.read_bytes(r.image_uri))
            owners.append(r.listing_id)
        except storage.StorageError:
            continue
    if len(data) < min_photos:
        return Calibration(None, f"not calibrated: {len(data)} review photos (< {min_photos})")
    embedded = embed_each(photos, data)
    good = embedded.good
    results, _ = search.search(embedded.vectors[good], DEPTH, Filter())
    match, other = [], []
    for i, hits in zip(good, results, strict=True):
        own = [h.score for h in hits if h.listing_id == owners[i]]
        others = [h.score for h in hits if h.listing_id != owners[i]]
        if own:
            match.append(own[0])
        if others:
            other.append(others[0])
    if len(match) < min_photos or not other:
        return Calibration(None, f"not calibrated: {len(match)} review photos found their listing")
    t, tpr, fpr = youden_threshold(np.array(match), np.array(other))
    log.info("no-match threshold %.4f (match rate %.3f, false accepts %.3f)", t, tpr, fpr)
    return Calibration(
        round(t, 6),
        f"{len(good)} held-out review photos: own listing vs best other listing (Youden's J)",
        len(good),
        round(tpr, 4),
        round(fpr, 4),
    )
