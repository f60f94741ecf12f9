"""The no-match threshold of an index, measured on held-out buyer photos.

The photos are review photos (what shoppers send) of eval-split listings
(``catalog.is_eval_listing``: the model trained on neither the listing nor its reviews) that the
index holds. Each is searched as the service searches (``PhotoSearch``: the same view of the
photo, the same index) and scored twice:

* listing in the index: is the first result its listing, and with what score;
* listing left out: the best score among the *other* listings, which is what an index without
  that listing answers, i.e. a photo of a product the catalog does not sell. Hits are one per
  listing, so it is the first hit that is not the photo's listing.

The threshold is the lowest score that at most ``TARGET_FALSE_ACCEPT_RATE`` of the left-out
searches reach (the false-accept rate is stated, not whatever falls out); the share of right
first results it flags is measured on the same photos. Both are reported.

Where it runs: build-index, right after the index is written (``build_index`` below wraps the
stage), and the figures go into the manifest. Build-index already has the catalog snapshot, the
model and a machine that runs TensorFlow; publish and serve are light tasks (issue 31: no
TensorFlow on the Airflow scheduler) and every replica would otherwise repeat it at start. The
service calibrates at start only for an older manifest without it (DESIGN.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index import manifest as manifest_mod
from index import searcher as searcher_mod
from index.manifest import NoMatchCalibration
from vsearch.app.per_photo import embed_each
from vsearch.app.photo_search import PhotoSearch
from vsearch.core import storage
from vsearch.core.catalog import Review, is_eval_listing

if TYPE_CHECKING:
    from pipelines.build_index import BuildIndexResult, BuildIndexSettings

log = logging.getLogger(__name__)

# At most 1 in 10 searches for a product the catalog does not sell may answer "found": telling a
# shopper a wrong product is theirs costs more than flagging a right one (the results are shown
# either way). The left-out listing's siblings (same category, colour, shape) are the hardest
# unsold products there are. The cost is measured and reported, not hidden: on the demo's model
# (BENCHMARKS.md, "No match") it flags 1.00 of noise, 0.99 and 0.92 of other styles' products
# and 0.75 of right first results, whose scores (median 0.85) overlap the best scores of unsold
# things: no threshold there flags at most 10% of right first results and 80% of unsold photos.
TARGET_FALSE_ACCEPT_RATE = 0.10
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
        found = photos.searcher.search_vectors(embedded.vectors[good], DEPTH)
        for i, hits in zip(good, found, strict=True):
            if not hits:
                continue
            others = [h.score for h in hits if h.listing_id != owners[i]]
            top.append(hits[0].score)
            right.append(hits[0].listing_id == owners[i])
            absent.append(others[0] if others else -1.0)  # a one-listing index: nothing else
    return PhotoScores(np.array(top), np.array(right, bool), np.array(absent))


def threshold_for(absent: np.ndarray, target: float) -> float:
    """The lowest threshold that at most ``target`` of the ``absent`` scores reach."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target false-accept rate must be in (0, 1), got {target}")
    ranked = np.sort(np.asarray(absent, np.float64))[::-1]
    allowed = int(np.floor(target * len(ranked) + 1e-9))  # searches that may clear it
    return float(np.nextafter(ranked[allowed], np.inf))  # just above the first one refused


def from_scores(scores: PhotoScores, target: float, where: str) -> NoMatchCalibration:
    t = threshold_for(scores.absent, target)
    far = float((scores.absent >= t).mean())
    right = scores.top[scores.right_first]
    flagged = float((right < t).mean()) if len(right) else 0.0
    n = len(scores.top)
    return NoMatchCalibration(
        threshold=t,
        target_false_accept_rate=target,
        false_accept_rate=round(far, 4),
        right_first_flagged=round(flagged, 4),
        photos=n,
        right_first=len(right),
        method=(
            f"{where} on {n} held-out buyer review photos: threshold for false accepts "
            f"<= {target:.0%} (listing left out); measured {far:.1%} false accepts, "
            f"{flagged:.1%} of {len(right)} right first results flagged"
        ),
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
    from vsearch.core.snapshot import read_snapshot

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


def build_index(
    settings: BuildIndexSettings, pipeline_args: list[str] | None = None
) -> BuildIndexResult:
    """The build-index stage with its no-match calibration (the stage registry runs this)."""
    from pipelines import build_index as stage  # Beam: loaded only when the stage runs

    def calibrate_written(manifest_uri: str) -> dict[str, Any]:
        return calibrate_build(
            manifest_uri, settings.workdir, settings.catalog, settings.date.isoformat()
        )

    return stage.run(settings, pipeline_args, calibrate=calibrate_written)
