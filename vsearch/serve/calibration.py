"""The "no good match" threshold the service answers with, and where it came from.

In order of preference:

1. ``--no-match-threshold``: the operator's fixed threshold.
2. The index manifest's ``calibration``, which build-index measured on held-out buyer photos
   (``search.calibrate``): read, not recomputed, so every replica starts fast and answers
   alike.
3. An older manifest without one: the same calibration, computed at start on the catalog's
   review photos (``--catalog``; ``--calibration-photos`` caps them).
4. Otherwise unknown: ``no_match`` is null in every answer.

A search whose best hit scores below the threshold, or whose photo the localiser doubts shows an
item at all (``item_threshold``), answers ``no_match: true``. The figures are
kept for ``/readyz`` and the health page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.catalog import Review
from index.manifest import NoMatchCalibration
from search import calibrate as calibrate_mod
from search.photo_search import PhotoSearch


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None: not calibrated (no_match is unknown)
    method: str  # how it was obtained, in words (with both error rates when measured)
    source: str  # "manifest", "computed at start", "operator" or "none"
    photos: int = 0  # held-out buyer photos measured
    target_false_accept_rate: float | None = None
    false_accept_rate: float | None = None  # listing left out: share of searches it accepts
    right_first_flagged: float | None = None  # share of right first results it flags
    item_threshold: float | None = None  # the localiser's item confidence below which: no match

    @classmethod
    def measured(cls, c: NoMatchCalibration, source: str) -> Calibration:
        return cls(
            c.threshold,
            c.method,
            source,
            c.photos,
            c.target_false_accept_rate,
            c.false_accept_rate,
            c.right_first_flagged,
            c.item_threshold,
        )

    def no_match(self, best_score: float | None, item_score: float | None = None) -> bool | None:
        """None: unknown. ``item_score``: the localiser's confidence that the photo shows an item
        (None or NaN: no localiser, the score alone decides)."""
        if self.threshold is None:
            return None
        if best_score is None or best_score < self.threshold:
            return True
        no_item = (
            self.item_threshold is not None
            and item_score is not None
            and item_score == item_score  # not NaN
            and item_score < self.item_threshold
        )
        return bool(no_item)


def calibrate(
    photos: PhotoSearch,
    reviews: Sequence[Review],
    max_photos: int = 200,
    min_photos: int = calibrate_mod.MIN_PHOTOS,
    fixed: float | None = None,
) -> Calibration:
    """The threshold for one index (see the module docstring for the order of preference)."""
    if fixed is not None:
        return Calibration(fixed, "set by the operator (--no-match-threshold)", "operator")
    stored = photos.manifest.calibration
    if stored is not None:
        return Calibration.measured(stored, "manifest")
    if max_photos <= 0:
        return Calibration(None, "not calibrated: --calibration-photos 0", "none")
    try:
        c = calibrate_mod.calibrate(
            photos,
            reviews,
            "computed at start (the manifest has none)",
            max_photos=max_photos,
            min_photos=min_photos,
        )
    except calibrate_mod.NotCalibrated as e:
        return Calibration(None, f"not calibrated: {e}", "none")
    return Calibration.measured(c, "computed at start")
