"""A third catalog style: buyer photos as phones take them ("phone").

Why: in the other two styles the item fills most of a buyer's photo. Shoppers' photos are not
like that: the item is small and off-centre in a cluttered room, other products stand beside
it, the light is bad and the frame is 4:3. Search has to work there too (issue 29).

* products: the first style's products (``products``: 12 categories, exact hues, patterns);
  ~8 % of listings are another listing's design in another colour, and 10 % are the very same
  product sold by another shop (its own listing id and photos);
* listing photos: non-square studio shots (4:3 or 3:4, longer side ``image_size``), 1-5 angles
  each (yaw, tilt, mirror, rotation), the item filling 65-90 % of the shorter side, JPEG 90;
* buyer photos: 4:3 frames (landscape or portrait, longer side ``image_size``); the item's box
  spans 20-60 % of the frame's longer side, anywhere in the frame, rotated up to 35 degrees and
  seen in perspective, in a room (wall, table, furniture, textures) that often holds 1-3 other
  products; colour cast, exposure, light falloff, defocus or motion blur, a phone's resample,
  sensor noise, JPEG quality 35-85; 15 % are stored turned with an EXIF orientation tag (an
  EXIF-aware decoder shows them upright), 5 % are turned without one (the phone was held
  sideways).

The photos are drawn by ``phone_photos``; this module decides the listings and writes the
catalog. The true box of the item in every buyer photo is written to ``OUT/truth/`` (``truth``).

Layout: ``OUT/dt=YYYY-MM-DD/{listings,reviews}.parquet`` (the catalog contract),
``OUT/images/P000123/<k>.jpg``, ``OUT/images/reviews/P000123-<k>.jpg``, ``OUT/truth/``,
``OUT/catalog.json``. Every draw comes from ``default_rng([seed, listing, STREAM, ...])``: the
output is byte-identical for the same arguments, whichever process renders a listing. Each
later day removes ~2 % of listings and adds ~4 %.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from core import storage
from synthetic import photos, products, tables, truth
from synthetic.phone_photos import REVIEW, STUDIO, review_photo, studio_photo
from synthetic.spec import ProductSpec

DEFAULT_IMAGE_SIZE = 256  # phone photos need pixels: an item at 20 % of 128 px is 26 px
RECOLOUR_FRACTION = 0.08
SAME_PRODUCT_FRACTION = 0.10
REMOVE_FRACTION, ADD_FRACTION = 0.02, 0.04
SPEC, DAY = 21, 1_000_011  # rng streams, distinct from the other styles' (and from STUDIO, REVIEW)


def listing_id(num: int) -> str:
    return f"P{num:06d}"


@dataclass(frozen=True)
class Listing:
    num: int
    spec: ProductSpec
    product_id: str  # shared by listings that sell the very same product
    design_id: str  # shared by colour variants of one design
    photos: int
    reviews: int


def draw_listing(seed: int, num: int) -> Listing:
    rng = np.random.default_rng([seed, num, SPEC])
    spec = products.sample_spec(rng)
    product, design = listing_id(num), listing_id(num)
    kind = rng.random()
    if num > 0 and kind < RECOLOUR_FRACTION + SAME_PRODUCT_FRACTION:
        parent = draw_listing(seed, int(rng.integers(max(0, num - 200), num)))
        design = parent.design_id
        if kind < SAME_PRODUCT_FRACTION:  # another shop sells the very same product
            spec, product = parent.spec, parent.product_id
        else:  # the same design in another colour
            spec = products.variant_of(parent.spec, rng, recolour=True)
    return Listing(
        num=num,
        spec=spec,
        product_id=product,
        design_id=design,
        photos=int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.25, 0.3, 0.15, 0.15])),
        reviews=int(rng.choice(4, p=[0.2, 0.35, 0.3, 0.15])),
    )


# ---------------------------------------------------------------- rendering a listing


@dataclass
class Rendered:
    num: int
    studio: list[tuple[str, bytes]] = field(default_factory=list)
    reviews: list[tuple[truth.ReviewBox, bytes]] = field(default_factory=list)


def render(task: tuple[int, int, int]) -> Rendered:
    """One listing's photos: a pure function of (seed, num, size)."""
    seed, num, size = task
    listing = draw_listing(seed, num)
    layer = photos.as_layer(products.draw_product(listing.spec, size))
    lid = listing_id(num)
    out = Rendered(num)
    for k in range(listing.photos):
        rng = np.random.default_rng([seed, num, STUDIO, k])
        out.studio.append((f"images/{lid}/{k}.jpg", studio_photo(layer, size, rng)))
    for k in range(listing.reviews):
        rng = np.random.default_rng([seed, num, REVIEW, k])
        data, box, side, orientation = review_photo(num, layer, size, rng, seed)
        uri = f"images/reviews/{lid}-{k}.jpg"
        out.reviews.append((truth.ReviewBox(f"{lid}-r{k}", lid, uri, box, side, orientation), data))
    return out


def _render_all(tasks: list[tuple[int, int, int]], workers: int) -> Iterator[Rendered]:
    if workers <= 1 or len(tasks) < 16:
        yield from map(render, tasks)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(render, tasks, chunksize=4)


def generate_phone_catalog(
    out: str,
    listings: int,
    days: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    start_date: dt.date = dt.date(2026, 1, 1),
    workers: int = 2,
    progress_every: int = 250,
) -> list[int]:
    """Write ``days`` daily snapshots under ``out``; returns the listing count of each day."""
    if listings < 1 or days < 1:
        raise ValueError(f"--listings and --days must be >= 1, got {listings} and {days}")
    if not 64 <= image_size <= 2048:
        raise ValueError(f"--image-size must be in 64..2048 for phone photos, got {image_size}")
    out = storage.normalize(out)
    alive, next_num, counts = list(range(listings)), listings, []
    drawn: dict[int, Listing] = {}
    boxes: list[truth.ReviewBox] = []
    for d in range(days):
        if d:
            rng = np.random.default_rng([seed, DAY, d])
            gone = set(rng.choice(alive, size=int(len(alive) * REMOVE_FRACTION), replace=False))
            alive = [n for n in alive if n not in gone]
            add = max(1, int(len(alive) * ADD_FRACTION))
            alive += list(range(next_num, next_num + add))
            next_num += add
        todo = [(seed, n, image_size) for n in alive if n not in drawn]
        for i, r in enumerate(_render_all(todo, workers), start=1):
            drawn[r.num] = draw_listing(seed, r.num)
            for uri, data in r.studio:
                storage.write_bytes(storage.join(out, uri), data)
            for box, data in r.reviews:
                storage.write_bytes(storage.join(out, box.image_uri), data)
                boxes.append(box)
            if progress_every and i % progress_every == 0:
                print(f"  phone catalog day {d + 1}: rendered {i}/{len(todo)} listings", flush=True)
        _write_day(out, start_date + dt.timedelta(days=d), [drawn[n] for n in alive])
        counts.append(len(alive))
    truth.write_review_boxes(out, boxes)
    truth.write_listing_products(
        out, [(listing_id(n), x.product_id, x.design_id) for n, x in sorted(drawn.items())]
    )
    storage.write_text(
        storage.join(out, "catalog.json"),
        json.dumps(
            {
                "format_version": 1,
                "generator": "synthetic.phone",
                "style": "phone",
                "parameters": {
                    "listings": listings,
                    "days": days,
                    "seed": seed,
                    "image_size": image_size,
                    "start_date": start_date.isoformat(),
                },
                "listings_per_day": counts,
                "truth": [truth.REVIEW_BOXES, truth.LISTINGS],
            },
            indent=2,
        )
        + "\n",
    )
    return counts


def _write_day(out: str, date: dt.date, alive: list[Listing]) -> None:
    rows, reviews = [], []
    stamp = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
    for x in alive:
        lid = listing_id(x.num)
        rows.append(
            {
                "listing_id": lid,
                "image_uris": [f"images/{lid}/{k}.jpg" for k in range(x.photos)],
                "title": x.spec.title,
                "category": x.spec.category,
                "color": x.spec.color,
                "shape": x.spec.shape,
                "material": x.spec.material,
                "updated_at": stamp,
            }
        )
        reviews += [
            {
                "review_id": f"{lid}-r{k}",
                "listing_id": lid,
                "image_uri": f"images/reviews/{lid}-{k}.jpg",
            }
            for k in range(x.reviews)
        ]
    tables.write_day(
        out,
        date,
        pa.Table.from_pylist(rows, schema=tables.LISTINGS_SCHEMA),
        pa.Table.from_pylist(reviews, schema=tables.REVIEWS_SCHEMA),
    )
