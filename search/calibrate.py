"""The no-match threshold of an index, measured on held-out buyer photos.

The photos are review photos (what shoppers send) of eval-split listings
(``catalog.is_eval_listing``: the model trained on neither the listing nor its reviews) that the
index holds. Each is searched as the service searches (``PhotoSearch``: the same view of the
photo, the same index) and scored twice:

* listing in the index: is the first result its listing, and with what score;
* listing left out: the best score among the *other* listings, which is what an index without
  that listing answers, i.e. a photo of a product the catalog does not sell. Hits are one per
  listing, so it is the first hit that is not the photo's listing.

Two signals decide, because the score alone cannot (measured on the demo, BENCHMARKS.md "No
match": right first results score a median 0.85, inside the best scores of unsold things; at a
10% false-accept rate the score flags 0.75 of right first results):

* the localiser's confidence that the photo shows an item at all (noise, a room, a product of
  another style score low): ``item_threshold`` is its ``ITEM_QUANTILE`` percentile over the
  held-out photos, every one of which shows a sold item (lower when that alone would flag more
  than ``MAX_RIGHT_FIRST_FLAGGED`` of the right first results: a small held-out set);
* the best score: the highest threshold that, with the item rule, flags at most
  ``MAX_RIGHT_FIRST_FLAGGED`` of the searches whose first result is right (the stated rate: a
  flag that fires on right answers is one no app can use).

The false-accept rate with the listing left out is measured under the same rule and reported
beside it. A model without a localiser, or held-out photos none of which found their listing
first, fall back to the score alone for ``TARGET_FALSE_ACCEPT_RATE`` false accepts.

Where it runs: build-index, right after the index is written (``pipelines.build_index.run``
calls ``calibrate_build``), and the figures go into the manifest. Build-index already has the catalog snapshot, the
model and a machine that runs TensorFlow; publish and serve are light tasks (issue 31: no
TensorFlow on the Airflow scheduler) and every replica would otherwise repeat it at start. The
service calibrates at start only for an older manifest without it (DESIGN.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import storage
from core.catalog import Review, is_eval_listing
from index import manifest as manifest_mod
from index import searcher as searcher_mod
from index.manifest import NoMatchCalibration
from search.per_photo import embed_each
from search.photo_search import PhotoSearch

log = logging.getLogger(__name__)

# The score-only fallback (a model without a localiser): at most 1 in 10 searches for a product
# the catalog does not sell may answer "found". On the demo's model it flags 0.75 of right first
# results (BENCHMARKS.md, "No match"): scores of right answers (median 0.85) overlap the best
# scores of unsold things, so the default rule below uses a second signal.
TARGET_FALSE_ACCEPT_RATE = 0.10
# At most 1 in 10 right first results flagged: what an app needs before it can hide results
# behind the flag. On the demo the two-signal rule then flags 1.00 of noise and 0.94 of another
# style's products, but accepts 0.70 of left-out listings' siblings (reported, not hidden).
MAX_RIGHT_FIRST_FLAGGED = 0.10
ITEM_QUANTILE = 0.05  # of held-out buyer photos (each shows a sold item) judged to show none
MAX_PHOTOS = 500  # a false-accept rate to about +-0.03; about a minute on 2 cores (demo)
# Fewer photos cannot resolve a 10% rate (one accepted search would be more): no threshold, and
# no_match is then unknown.
MIN_PHOTOS = 10
BATCH = 64  # photos embedded per call (bounded memory)
# Listings fetched per photo. Its own takes at most one place, but a listing with many photos
# near the query could fill a fetch sized for 2 listings, leaving no other to score.
DEPTH = 5


class NotCalibrated(ValueError):
    """Too few usable held-out photos; the message says how many."""


@dataclass(frozen=True)
class PhotoScores:
    top: np.ndarray  # [N] best score, listing in the index
    right_first: np.ndarray  # [N] bool: the first result is the photo's listing
    absent: np.ndarray  # [N] best score, listing left out
    item: np.ndarray | None = None  # [N] localiser's item confidence; None: no localiser


def held_out_reviews(
    photos: PhotoSearch, reviews: Sequence[Review], max_photos: int = MAX_PHOTOS
) -> list[Review]:
    """Up to ``max_photos`` reviews of eval listings the index holds, spread by review id."""
    held_out = sorted(
        (r for r in reviews if is_eval_listing(r.listing_id)), key=lambda r: r.review_id
    )
    wanted = pa.array(sorted({r.listing_id for r in held_out}), pa.string())
    indexed: set[str] = set()
    for ids in searcher_mod.id_maps(photos.searcher):  # an id map per shard: no catalog-size set
        column = ids.column("listing_id")
        indexed.update(pc.filter(column, pc.is_in(column, value_set=wanted)).to_pylist())
    usable = [r for r in held_out if r.listing_id in indexed]
    return usable[:: max(1, len(usable) // max(max_photos, 1))][:max_photos]


def score_photos(photos: PhotoSearch, reviews: Sequence[Review]) -> PhotoScores:
    """Search each review photo as the service does; unreadable photos are left out."""
    top: list[float] = []
    right: list[bool] = []
    absent: list[float] = []
    item: list[float] = []
    for start in range(0, len(reviews), BATCH):
        data, owners = [], []
        for r in reviews[start : start + BATCH]:
            try:
                data.append(storage.read_bytes(r.image_uri))
                owners.append(r.listing_id)
            except storage.StorageError:
                continue
        embedded = embed_each(photos, data)
        good = embedded.good
        found = embedded.search_hits(photos.searcher.search_vectors, good, DEPTH)
        for i, hits in zip(good, found, strict=True):
            if not hits:
                continue
            others = [h.score for h in hits if h.listing_id != owners[i]]
            top.append(hits[0].score)
            right.append(hits[0].listing_id == owners[i])
            absent.append(others[0] if others else -1.0)  # a one-listing index: nothing else
            item.append(float(embedded.item_scores[i]))
    items = np.array(item, np.float64)
    has_item = len(items) > 0 and bool(np.isfinite(items).all())
    return PhotoScores(
        np.array(top), np.array(right, bool), np.array(absent), items if has_item else None
    )


# A threshold never sits on a measured score: it sits halfway between the two scores it separates
# (or this far beyond the last one), so that the same photo searched in a batch of another size,
# whose score differs in the 6th decimal, is judged as it was measured.
EDGE_MARGIN = 1e-3


def between(values: np.ndarray, t: float) -> float:
    """A cut equivalent to ``t`` on ``values`` (``v < t`` flagged, ``v >= t`` kept) that lies
    halfway between the largest flagged value and the smallest kept one."""
    v = np.asarray(values, np.float64)
    below, above = v[v < t], v[v >= t]
    if below.size and above.size:
        return float((below.max() + above.min()) / 2)
    return float(above.min() - EDGE_MARGIN) if above.size else float(below.max() + EDGE_MARGIN)


def threshold_for(absent: np.ndarray, target: float) -> float:
    """A threshold that at most ``target`` of the ``absent`` scores reach, the lowest such up to
    the margin (``between``: halfway between the first refused score and the next)."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target false-accept rate must be in (0, 1), got {target}")
    ranked = np.sort(np.asarray(absent, np.float64))[::-1]
    allowed = int(np.floor(target * len(ranked) + 1e-9))  # searches that may clear it
    return between(ranked, float(np.nextafter(ranked[allowed], np.inf)))


def score_threshold_for(top: np.ndarray, item_flagged: np.ndarray, budget: float) -> float:
    """The highest threshold on ``top`` (right first results' scores) that, with the photos the
    item rule already flags, flags at most ``budget`` of them (placed by ``between``)."""
    best = float(np.min(top))  # flags none by score
    for t in np.unique(top):
        if float(((top < t) | item_flagged).mean()) <= budget + 1e-9:
            best = float(t)
    return between(top, best)


def item_cut(item: np.ndarray, right: np.ndarray, max_flagged: float) -> tuple[float, bool]:
    """The item confidence below which a photo is flagged: its ``ITEM_QUANTILE`` percentile over
    the held-out photos, lowered when that alone would flag more than ``max_flagged`` of the
    right first results (few of them, one of which shows its item faintly: 1 of 3 was flagged);
    and whether it was lowered."""
    quantile = float(np.quantile(item, ITEM_QUANTILE))
    ranked = np.sort(item[right])
    allowed = int(np.floor(max_flagged * len(ranked) + 1e-9))  # right first photos it may flag
    if allowed < len(ranked) and ranked[allowed] < quantile:
        return float(ranked[allowed]), True
    return quantile, False


def from_scores(
    scores: PhotoScores,
    target: float,
    where: str,
    max_flagged: float = MAX_RIGHT_FIRST_FLAGGED,
) -> NoMatchCalibration:
    """The two-signal rule (module docstring); the score alone for ``target`` false accepts
    when there is no item score or no right first result."""
    right = scores.right_first
    n = len(scores.top)
    usable_item = scores.item is not None and bool(np.isfinite(scores.item).all())
    if usable_item and right.any():
        assert scores.item is not None
        cut, lowered = item_cut(scores.item, right, max_flagged)
        t_item: float | None = between(scores.item, cut)
        which = (
            f"under its {ITEM_QUANTILE:.0%} percentile, which alone flagged more"
            if lowered
            else f"its {ITEM_QUANTILE:.0%} percentile here"
        )
        item_ok = scores.item >= t_item
        t = score_threshold_for(scores.top[right], ~item_ok[right], max_flagged)
        rule = (
            f"flag when the best score < {t:.4f} or the localiser's item confidence < "
            f"{t_item:.4f} ({which}), chosen to flag at most "
            f"{max_flagged:.0%} of right first results"
        )
        target_far: float | None = None
        target_flagged: float | None = max_flagged
    else:
        t_item, item_ok = None, np.ones(n, bool)
        t = threshold_for(scores.absent, target)
        rule = f"threshold for false accepts <= {target:.0%} (listing left out)"
        target_far, target_flagged = target, None
    accepted = (scores.top >= t) & item_ok
    far = float(((scores.absent >= t) & item_ok).mean())
    flagged = float((~accepted[right]).mean()) if right.any() else 0.0
    return NoMatchCalibration(
        threshold=t,
        target_false_accept_rate=target_far,
        false_accept_rate=round(far, 4),
        right_first_flagged=round(flagged, 4),
        photos=n,
        right_first=int(right.sum()),
        method=(
            f"{where} on {n} held-out buyer review photos: {rule}; measured {far:.1%} false "
            f"accepts (listing left out), {flagged:.1%} of {int(right.sum())} right first "
            "results flagged"
        ),
        item_threshold=t_item,
        target_right_first_flagged=target_flagged,
    )


def calibrate(
    photos: PhotoSearch,
    reviews: Sequence[Review],
    where: str,
    target: float = TARGET_FALSE_ACCEPT_RATE,
    max_photos: int = MAX_PHOTOS,
    min_photos: int = MIN_PHOTOS,
) -> NoMatchCalibration:
    """The threshold for ``target`` and both measured error rates; NotCalibrated with too few
    held-out photos. ``where``: who calibrated, for the method's text (build-index, serve)."""
    picked = held_out_reviews(photos, reviews, max_photos)
    if len(picked) < min_photos:
        raise NotCalibrated(
            f"{len(picked)} review photos of held-out listings in the index (< {min_photos})"
        )
    scores = score_photos(photos, picked)
    if len(scores.top) < min_photos:
        raise NotCalibrated(f"{len(scores.top)} usable held-out review photos (< {min_photos})")
    c = from_scores(scores, target, where)
    log.info("no-match threshold %.4f: %s", c.threshold, c.method)
    return c


def calibrate_build(manifest_uri: str, workdir: str, catalog: str, date: str) -> dict[str, Any]:
    """Calibrate a written build and store the result in its manifest (rewritten atomically,
    before anything can publish it). Returns the figures for the run summary."""
    from core.snapshot import read_snapshot

    reviews = read_snapshot(catalog, date).reviews
    searcher = searcher_mod.Searcher.from_manifest_uri(manifest_uri, workdir=workdir)
    with PhotoSearch(searcher, workdir) as p:
        try:
            c = calibrate(p, reviews, "build-index")
        except NotCalibrated as e:
            print(f"no-match threshold: not calibrated ({e}); the service will say unknown")
            return {"no_match": f"not calibrated: {e}"}
        m = p.manifest
    manifest_mod.write(manifest_uri, replace(m, calibration=c))
    print(f"no-match threshold {c.threshold:.4f}: {c.method}")
    return {"no_match": asdict(c)}
