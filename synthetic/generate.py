"""The studio catalog (``vsearch generate-catalog``'s default style): a synthetic marketplace, K
daily snapshots, deterministic per seed.

Layout (DESIGN.md "Catalog snapshot")::

    OUT/dt=YYYY-MM-DD/listings.parquet   listing_id, image_uris (relative), title, category,
                                         color/shape/material (nullable), updated_at
    OUT/dt=YYYY-MM-DD/reviews.parquet    review_id, listing_id, image_uri (relative)
    OUT/images/L000123/0-<hash8>.jpg     studio photos (name carries the content hash)
    OUT/images/reviews/R000123-0.jpg     buyer review photos
    OUT/catalog.json                     generation parameters and per-day counts
    OUT/truth/review_boxes.parquet       each buyer photo's true product box (``truth``)

Day 1 has ``listings`` listings. Each later day removes ~2 % of them, re-shoots the photos of ~3 %
(new files, new URIs), adds a review photo to ~3 % and adds ~5 % new listings; everything else
keeps the very same image files, so incremental stages have real but bounded work.

Determinism: every random draw comes from ``numpy.random.default_rng([seed, listing, purpose,
...])``, so a listing's product and photos do not depend on the order or the process that renders
them, and the same arguments give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from core import storage
from synthetic import products, render, tables, truth
from synthetic.render import listing_id, review_id

# Per-day churn, as fractions of the listings alive the day before.
ADD_FRACTION = 0.05
CHANGE_FRACTION = 0.03
REMOVE_FRACTION = 0.02
NEW_REVIEW_FRACTION = 0.03
MAX_WORKERS = 2  # the reference machine has 2 cores

_DAY_STREAM = 1_000_003  # default_rng([seed, _DAY_STREAM, day]) picks the day's churn


@dataclass(frozen=True)
class DayCounts:
    date: str
    listings: int
    images: int
    reviews: int
    added: int
    changed: int
    removed: int
    new_reviews: int
    images_written: int  # files rendered that day (new + changed listings, new reviews)
    corrupt_images: int  # deliberately broken files written that day


@dataclass(frozen=True)
class GeneratedCatalog:
    """What ``generate_catalog`` wrote."""

    out: str
    seed: int
    image_size: int
    days: tuple[DayCounts, ...]
    wall_s: float

    @property
    def dates(self) -> list[str]:
        return [d.date for d in self.days]


# ---------------------------------------------------------------- the daily plan (driver side)


@dataclass
class _State:
    photo_version: int
    uris: tuple[str, ...]
    reviews: list[tuple[str, str]]  # (review_id, relative uri)
    updated_at: dt.datetime


def _pick(rng: np.random.Generator, pool: list[int], fraction: float) -> list[int]:
    if not pool:
        return []
    n = min(len(pool), max(1, round(fraction * len(pool))))
    return sorted(int(x) for x in rng.choice(pool, size=n, replace=False))


def _plan_day(
    seed: int, d: int, alive: list[int], next_num: int, listings: int
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Which listings are (added, re-shot, removed, newly reviewed) on day index ``d``."""
    if d == 0:
        return list(range(listings)), [], [], []
    rng = np.random.default_rng([seed, _DAY_STREAM, d])
    removed = _pick(rng, alive, REMOVE_FRACTION)
    gone = set(removed)
    kept = [n for n in alive if n not in gone]
    # Fractions are of yesterday's listings, drawn among those that stay.
    per_kept = len(alive) / max(len(kept), 1)
    changed = _pick(rng, kept, CHANGE_FRACTION * per_kept)
    reviewed = _pick(rng, kept, NEW_REVIEW_FRACTION * per_kept)
    added = list(range(next_num, next_num + max(1, round(ADD_FRACTION * len(alive)))))
    return added, changed, removed, reviewed


def _side(box: tuple[float, float, float, float]) -> float:
    """The box's longer side over the (square) photo's side."""
    return max(box[2] - box[0], box[3] - box[1])


def _timestamp(seed: int, num: int, day_index: int, date: dt.date) -> dt.datetime:
    rng = np.random.default_rng([seed, num, render.CLOCK, day_index])
    seconds = int(rng.integers(0, 86_400))
    return dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


def generate_catalog(
    out: str,
    listings: int,
    days: int,
    seed: int,
    image_size: int = 128,
    start_date: dt.date = dt.date(2026, 1, 1),
    corrupt_fraction: float = 0.0,
    workers: int = MAX_WORKERS,
    progress_every: int = 500,
) -> GeneratedCatalog:
    """Write ``days`` daily snapshots of a synthetic catalog under ``out`` (a path or gs:// URI)."""
    if listings < 1 or days < 1:
        raise ValueError(f"--listings and --days must be >= 1, got {listings} and {days}")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"--image-size must be in 16..1024, got {image_size}")
    if not 0.0 <= corrupt_fraction <= 1.0:
        raise ValueError(f"--corrupt-fraction must be in 0..1, got {corrupt_fraction}")
    out = storage.normalize(out)
    started = time.perf_counter()
    state: dict[int, _State] = {}
    metas: dict[int, render.Meta] = {}
    next_num = 0
    counts: list[DayCounts] = []
    # Writes wait on fsync or the network, not the CPU: overlap many of them with rendering.
    boxes: list[truth.ReviewBox] = []
    writer = ThreadPoolExecutor(max_workers=8)
    try:
        for d in range(days):
            date = start_date + dt.timedelta(days=d)
            added, changed, removed, reviewed = _plan_day(
                seed, d, sorted(state), next_num, listings
            )
            next_num += len(added)
            for n in removed:
                del state[n]
            for n in added:
                metas[n] = render.listing_meta(seed, n)
            tasks = _day_tasks(
                added, changed, reviewed, state, metas, seed, image_size, corrupt_fraction
            )
            written = corrupt = 0
            futures = []
            for i, r in enumerate(render.render_all(tasks, workers), start=1):
                written += len(r.studio) + len(r.reviews)
                corrupt += r.corrupt
                for rel, data in r.studio + [(u, b) for _, u, b, _ in r.reviews]:
                    futures.append(writer.submit(storage.write_bytes, storage.join(out, rel), data))
                _apply(r, state, seed, d, date)
                boxes += [
                    truth.ReviewBox(review_id(r.num, k), listing_id(r.num), u, b, _side(b))
                    for k, u, _, b in r.reviews
                ]
                if progress_every and i % progress_every == 0:
                    print(
                        f"  {date}: rendered {i}/{len(tasks)} listings, {written} images, "
                        f"{time.perf_counter() - started:.1f} s",
                        flush=True,
                    )
            for f in futures:
                f.result()  # surface write errors here, with the URI in the message
            _write_day(out, date, state, metas)
            counts.append(
                DayCounts(
                    date=date.isoformat(),
                    listings=len(state),
                    images=sum(len(s.uris) for s in state.values()),
                    reviews=sum(len(s.reviews) for s in state.values()),
                    added=len(added),
                    changed=len(changed),
                    removed=len(removed),
                    new_reviews=len(reviewed),
                    images_written=written,
                    corrupt_images=corrupt,
                )
            )
            if progress_every:
                c = counts[-1]
                print(
                    f"  {date}: {c.listings} listings (+{c.added} ~{c.changed} -{c.removed}), "
                    f"{c.images} images, {c.reviews} reviews; {written} files written, "
                    f"{time.perf_counter() - started:.1f} s",
                    flush=True,
                )
    finally:
        writer.shutdown(wait=True)
    truth.write_review_boxes(out, boxes)
    storage.write_text(
        storage.join(out, "catalog.json"),
        _catalog_json(seed, listings, days, image_size, start_date, corrupt_fraction, counts),
    )
    return GeneratedCatalog(out, seed, image_size, tuple(counts), time.perf_counter() - started)


def _day_tasks(
    added: list[int],
    changed: list[int],
    reviewed: list[int],
    state: dict[int, _State],
    metas: dict[int, render.Meta],
    seed: int,
    size: int,
    corrupt_fraction: float,
) -> list[render.Task]:
    tasks = [
        render.Task(n, 0, tuple(range(metas[n].initial_reviews)), seed, size, corrupt_fraction)
        for n in added
    ]
    for n in sorted(set(changed) | set(reviewed)):
        version = state[n].photo_version + 1 if n in changed else None
        ks = (len(state[n].reviews),) if n in reviewed else ()
        tasks.append(render.Task(n, version, ks, seed, size, corrupt_fraction))
    return tasks


def _apply(r: render.Rendered, state: dict[int, _State], seed: int, d: int, date: dt.date) -> None:
    """Fold one listing's new files into the running state."""
    s = state.get(r.num)
    if s is None:
        s = state[r.num] = _State(-1, (), [], _timestamp(seed, r.num, d, date))
    if r.studio:
        s.photo_version += 1
        s.uris = tuple(u for u, _ in r.studio)
        s.updated_at = _timestamp(seed, r.num, d, date)
    s.reviews.extend((review_id(r.num, k), u) for k, u, _, _ in r.reviews)


def _write_day(
    out: str, date: dt.date, state: dict[int, _State], metas: dict[int, render.Meta]
) -> None:
    nums = sorted(state)
    listings = pa.table(
        {
            "listing_id": [listing_id(n) for n in nums],
            "image_uris": [list(state[n].uris) for n in nums],
            "title": [metas[n].spec.title for n in nums],
            "category": [metas[n].spec.category for n in nums],
            "color": [metas[n].color for n in nums],
            "shape": [metas[n].shape for n in nums],
            "material": [metas[n].material for n in nums],
            "updated_at": [state[n].updated_at for n in nums],
        },
        schema=tables.LISTINGS_SCHEMA,
    )
    rows = [(rid, listing_id(n), uri) for n in nums for rid, uri in state[n].reviews]
    reviews = pa.table(
        {
            "review_id": [r[0] for r in rows],
            "listing_id": [r[1] for r in rows],
            "image_uri": [r[2] for r in rows],
        },
        schema=tables.REVIEWS_SCHEMA,
    )
    tables.write_day(out, date, listings, reviews)


def _catalog_json(
    seed: int,
    listings: int,
    days: int,
    image_size: int,
    start_date: dt.date,
    corrupt_fraction: float,
    counts: list[DayCounts],
) -> str:
    doc = {
        "format_version": 1,
        "generator": "synthetic.generate",
        "parameters": {
            "listings": listings,
            "days": days,
            "seed": seed,
            "image_size": image_size,
            "start_date": start_date.isoformat(),
            "corrupt_fraction": corrupt_fraction,
        },
        "vocabulary": {
            "category": [c for c, _ in products.CATEGORIES],
            "color": list(products.COLORS),
            "shape": list(products.SHAPES),
            "material": list(products.MATERIALS),
        },
        "snapshots": [asdict(c) for c in counts],
    }
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"
