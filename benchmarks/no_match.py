"""Does ``no_match`` mean no match? The published index of a workdir, measured as a shopper sees it.

The calibration is computed as build-index computes it (``search.calibrate``: held-out buyer
photos, own listing vs listing left out; the best score and the localiser's item confidence), without
writing anything, and compared with the one stored in the manifest when there is one. Then,
searched as the service searches (top hit's score below the threshold, or item confidence below
its threshold = flagged):

  right first    every held-out buyer photo whose first result is its listing: share flagged
                 (the acceptance: at most 10%)
  noise          seeded uniform-noise photos (nothing): share flagged (at least 80%)
  bazaar, phone  buyer photos of products of the two other catalog styles: share flagged (at
                 least 80%)
  youden (old)   for comparison, the threshold the service chose before issue 30: Youden's J on
                 every indexed listing's review photos (training listings included)

    python -m benchmarks.no_match --workdir WORK --catalog CAT [--date D] [--photos N]
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image

from core import storage
from core.catalog import Review
from core.snapshot import read_snapshot
from index.manifest import NoMatchCalibration
from search import calibrate
from search.per_photo import embed_each
from search.photo_search import PhotoSearch
from vsearch.serve.calibration import Calibration


def noise_photos(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(5)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def bazaar_photos(n: int, size: int) -> list[bytes]:
    from synthetic import bazaar

    return [bazaar.review_photo(7, bazaar.draw_item(7, i), 0, size) for i in range(n)]


def phone_photos(n: int, size: int) -> list[bytes]:
    from synthetic import phone

    out: list[bytes] = []
    num = 0
    while len(out) < n:
        out += [data for _, data in phone.render((7, num, size)).reviews][: n - len(out)]
        num += 1
    return out


def top_scores(photos: PhotoSearch, data: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's best score and the localiser's item confidence (NaN: no localiser)."""
    scores: list[float] = []
    items: list[float] = []
    for i in range(0, len(data), calibrate.BATCH):
        embedded = embed_each(photos, data[i : i + calibrate.BATCH])
        found = embedded.search_hits(photos.searcher.search_vectors, embedded.good, 1)
        scores += [hits[0].score if hits else -1.0 for hits in found]
        items += [float(embedded.item_scores[j]) for j in embedded.good]
    return np.array(scores), np.array(items)


def flagged(c: NoMatchCalibration, scores: np.ndarray, items: np.ndarray) -> float:
    """The share the service flags: its own rule (``Calibration.no_match``), not a copy."""
    served = Calibration.measured(c, "benchmark")
    return float(
        np.mean([served.no_match(float(s), float(i)) for s, i in zip(scores, items, strict=True)])
    )


def youden_threshold(photos: PhotoSearch, reviews: list[Review], n: int) -> float:
    """The pre-issue-30 rule, for comparison: own score vs best other, J = TPR - FPR."""
    sample = sorted(reviews, key=lambda r: r.review_id)[:: max(1, len(reviews) // n)][:n]
    match, other = [], []
    for i in range(0, len(sample), calibrate.BATCH):
        chunk = sample[i : i + calibrate.BATCH]
        embedded = embed_each(photos, [storage.read_bytes(r.image_uri) for r in chunk])
        found = embedded.search_hits(photos.searcher.search_vectors, embedded.good, 50)
        for j, hits in zip(embedded.good, found, strict=True):
            own = [h.score for h in hits if h.listing_id == chunk[j].listing_id]
            others = [h.score for h in hits if h.listing_id != chunk[j].listing_id]
            match += own[:1]
            other += others[:1]
    m, o = np.array(match), np.array(other)
    best, best_j = 0.0, -1.0
    for t in np.unique(np.concatenate([m, o])):
        gap = float((m >= t).mean() - (o >= t).mean())
        if gap > best_j:
            best, best_j = float(t), gap
    return best


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--date", default="2026-01-02", help="the snapshot the index was built from")
    ap.add_argument("--photos", type=int, default=calibrate.MAX_PHOTOS, help="held-out photos")
    ap.add_argument("--unsold", type=int, default=200, help="photos of each kind of unsold thing")
    ap.add_argument("--size", type=int, default=128, help="side of the generated photos")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    reviews = list(read_snapshot(args.catalog, args.date).reviews)
    with PhotoSearch.open(args.workdir) as photos:
        stored = photos.manifest.calibration
        held = calibrate.score_photos(
            photos, calibrate.held_out_reviews(photos, reviews, args.photos)
        )
        c = calibrate.from_scores(held, calibrate.TARGET_FALSE_ACCEPT_RATE, "benchmark")
        unsold = {
            "noise": top_scores(photos, noise_photos(args.unsold, args.size)),
            "bazaar": top_scores(photos, bazaar_photos(args.unsold, args.size)),
            "phone": top_scores(photos, phone_photos(args.unsold, 2 * args.size)),
        }
        old = youden_threshold(photos, reviews, 200)
    right = held.top[held.right_first]
    figures = {
        "threshold": c.threshold,
        "stored_threshold": stored.threshold if stored else None,
        "target_false_accept_rate": c.target_false_accept_rate,
        "false_accept_rate": c.false_accept_rate,
        "right_first_flagged": c.right_first_flagged,
        "photos": c.photos,
        "right_first": c.right_first,
        "median_right_first_score": float(np.median(right)),
        "item_threshold": c.item_threshold,
        "flagged_unsold": {k: flagged(c, *v) for k, v in unsold.items()},
        "youden_threshold_before": old,
        "youden_right_first_flagged": float((right < old).mean()),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(figures, indent=2))
    # The trade-off: every threshold between the 5th and 95th percentile of right first scores.
    print("threshold  right-first flagged  false accepts (left out)  flagged: noise bazaar phone")
    for t in np.unique(np.round(np.percentile(right, np.arange(5, 100, 5)), 3)):
        flags = "  ".join(f"{(v[0] < t).mean():.3f}" for v in unsold.values())
        far = (held.absent >= t).mean()
        print(f"{t:9.3f}  {(right < t).mean():19.3f}  {far:24.3f}  {flags}")
    if args.json:
        storage.write_text(args.json, json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
