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

The true box of the item in every buyer photo is written to ``OUT/truth/`` (``truth``).

Layout: ``OUT/dt=YYYY-MM-DD/{listings,reviews}.parquet`` (the catalog contract),
``OUT/images/P000123/<k>.jpg``, ``OUT/images/reviews/P000123-<k>.jpg``, ``OUT/truth/``,
``OUT/catalog.json``. Every draw comes from ``default_rng([seed, listing, STREAM, ...])``: the
output is byte-identical for the same arguments, whichever process renders a listing. Each
later day removes ~2 % of listings and adds ~4 %.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

from core import paths, storage
from synthetic import photos, products, truth
from synthetic.generate import LISTINGS_SCHEMA, REVIEWS_SCHEMA

DEFAULT_IMAGE_SIZE = 256  # phone photos need pixels: an item at 20 % of 128 px is 26 px
RECOLOUR_FRACTION = 0.08
SAME_PRODUCT_FRACTION = 0.10
REMOVE_FRACTION, ADD_FRACTION = 0.02, 0.04
ITEM_SIDE = (0.2, 0.6)  # the item's box, as a fraction of the frame's longer side
EXIF_TURNED, PLAIN_TURNED = 0.15, 0.05
SPEC, STUDIO, REVIEW, DAY = 21, 22, 23, 1_000_011  # rng streams, distinct from the other styles'


def listing_id(num: int) -> str:
    return f"P{num:06d}"


@dataclass(frozen=True)
class Listing:
    num: int
    spec: products.ProductSpec
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


# ---------------------------------------------------------------- geometry


def _frame(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of a 4:3 photo, landscape or portrait, longer side ``size``."""
    short = round(size * 3 / 4)
    return (size, short) if rng.random() < 0.6 else (short, size)


def _warp(
    layer: Image.Image,
    frame: tuple[int, int],
    centre: tuple[float, float],
    side: float,
    rotation_deg: float,
    perspective: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The product layer drawn into a frame: premultiplied RGBA float32 [H, W, 4] in 0..1.

    ``side``: the layer's square canvas side in frame pixels (the product fills ~80 % of it);
    yaw, tilt and mirror come from ``rng``; ``perspective`` moves each corner by up to that
    fraction of ``side``.
    """
    n = max(8, round(side))
    small = layer.resize((n, n), Image.Resampling.BILINEAR)
    half = n / 2.0
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    dst = corners * np.array([rng.uniform(0.75, 1.0) * mirror, rng.uniform(0.8, 1.0)])
    th = np.deg2rad(rotation_deg)
    dst = dst @ np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]).T
    dst = dst + np.array(centre) + rng.uniform(-perspective, perspective, size=(4, 2)) * n
    coeffs = photos._homography(corners + half, dst)
    warped = small.transform(frame, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    return np.asarray(warped, dtype=np.float32) / 255.0


def _over(bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    return bg * (1 - fg[..., 3:4]) + fg[..., :3]


def _encode(rgb: np.ndarray, quality: int, exif_orientation: int = 1) -> bytes:
    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    if exif_orientation == 1:
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    # Stored turned, with the tag that tells a viewer how to turn it back (what phones do).
    stored = img.transpose(
        Image.Transpose.ROTATE_90 if exif_orientation == 6 else Image.Transpose.ROTATE_270
    )
    exif = Image.Exif()
    exif[0x0112] = exif_orientation
    stored.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------- listing photos


def studio_photo(layer: Image.Image, size: int, rng: np.random.Generator) -> bytes:
    """A seller's shot: a light paper sweep, the item centred, one of several angles."""
    w, h = _frame(size, rng)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    sweep = rng.uniform(0.86, 0.98) + rng.uniform(-0.015, 0.015, 3) - 0.06 * yy * rng.random()
    bg = np.broadcast_to(sweep, (h, w, 3)).astype(np.float32)
    fill = rng.uniform(0.65, 0.9) if rng.random() < 0.85 else rng.uniform(1.1, 1.4)  # detail shot
    side = min(w, h) * fill / 0.8  # the product is ~80 % of its layer
    centre = (w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h)
    fg = _warp(layer, (w, h), centre, side, rng.uniform(-15, 15), 0.03, rng)
    shadow = Image.fromarray((fg[..., 3] * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(size / 50)
    )
    s = np.asarray(shadow, dtype=np.float32)[..., None] / 255.0
    shaded = bg * (1 - rng.uniform(0.1, 0.3) * np.roll(s, max(1, h // 40), axis=0))
    return _encode(_over(shaded, fg), 90)


# ---------------------------------------------------------------- buyer photos


def _rgb(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> tuple[int, int, int]:
    c = lo + (hi - lo) * rng.random(3)
    return (int(c[0] * 255), int(c[1] * 255), int(c[2] * 255))


def _room(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A room behind the item: a wall, a table or floor, furniture and things, out of focus."""
    img = Image.new("RGB", (w, h), _rgb(rng, 0.3, 0.9))
    d = ImageDraw.Draw(img)
    horizon = rng.uniform(0.25, 0.65) * h
    d.polygon(  # the table top, seen from above at an angle
        [(0, horizon + rng.uniform(-0.1, 0.1) * h), (w, horizon), (w, h), (0, h)],
        fill=_rgb(rng, 0.15, 0.8),
    )
    for _ in range(int(rng.integers(5, 16))):  # furniture, books, boxes, plants, cables
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        bw, bh = rng.uniform(0.04, 0.45) * w, rng.uniform(0.04, 0.45) * h
        shape = rng.integers(3)
        fill = _rgb(rng)
        if shape == 0:
            d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=fill)
        elif shape == 1:
            d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=fill)
        else:
            d.line([x0, y0, x0 + bw, y0 + bh], fill=fill, width=int(rng.integers(1, 6)))
    out = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 2.0))), np.float32)
    if rng.random() < 0.5:  # a patterned cloth or wood grain on the table
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(a) + yy * np.sin(a)) / rng.uniform(2, 8))
        below = (yy > horizon)[..., None]
        out = out * np.where(below, 1 + 0.12 * wave[..., None], 1.0)
    return np.clip(out / 255.0, 0, 1).astype(np.float32)


def _light(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, a light falloff across the frame, gamma."""
    h, w, _ = rgb.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    a = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0.55, 1.2) * (1 + rng.uniform(0, 0.6) * (xx * np.cos(a) + yy * np.sin(a)))
    light = light * (1 - rng.uniform(0, 0.6) * (xx**2 + yy**2))
    t = rng.uniform(-1, 1)  # tungsten .. shade
    cast = np.array([1 + 0.18 * t, 1 + rng.uniform(-0.06, 0.06), 1 - 0.2 * t], np.float32)
    out = np.clip(rgb * light[..., None] * cast, 0, 1) ** rng.uniform(0.8, 1.25)
    return out.astype(np.float32)


def _optics(rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Defocus or motion blur, a phone's resample (digital zoom, low resolution), sensor noise."""
    img = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    w, h = img.size
    if rng.random() < 0.35:
        f = rng.uniform(0.35, 0.75)
        img = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR)
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    blur = rng.random()
    if blur < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6) * size / 256))
    elif blur < 0.7:  # hand shake: a short motion blur
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        if rng.random() < 0.5:
            kernel[k // 2, :] = 1
        else:
            kernel[np.arange(k), np.arange(k)] = 1
        if k in (3, 5):
            img = img.filter(ImageFilter.Kernel((k, k), kernel.ravel().tolist(), float(k)))
        else:
            img = img.filter(ImageFilter.BoxBlur(k / 4))
    out = np.asarray(img, np.float32) / 255.0
    sigma = np.float32(rng.uniform(0.005, 0.05))
    return (out + sigma * rng.standard_normal(out.shape, dtype=np.float32)).astype(np.float32)


def review_photo(
    listing: Listing, layer: Image.Image, size: int, rng: np.random.Generator, seed: int
) -> tuple[bytes, tuple[float, float, float, float], float, int]:
    """A buyer's phone photo: (JPEG bytes, true box as the viewer sees it, item side, EXIF tag)."""
    w, h = _frame(size, rng)
    rgb = _room(w, h, rng)
    # Other products in the room: drawn smaller, behind the item or beside it.
    for j in range(int(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1]))):
        other = products.sample_spec(np.random.default_rng([seed, listing.num, REVIEW, 99, j]))
        o_layer = photos.as_layer(products.draw_product(other, 96))
        o_side = rng.uniform(0.15, 0.45) * max(w, h) / 0.8
        at = (rng.uniform(0, w), rng.uniform(0, h))
        rgb = _over(rgb, _warp(o_layer, (w, h), at, o_side, rng.uniform(-40, 40), 0.08, rng))
    item_side = rng.uniform(*ITEM_SIDE)  # the box's longer side, of the frame's longer side
    side = item_side * max(w, h) / 0.8
    margin = 0.45 * item_side * max(w, h)
    centre = (
        rng.uniform(min(margin, w / 2), max(w - margin, w / 2)),
        rng.uniform(min(margin, h / 2), max(h - margin, h / 2)),
    )
    fg = _warp(layer, (w, h), centre, side, rng.uniform(-35, 35), rng.uniform(0.02, 0.12), rng)
    box = truth.alpha_box(fg[..., 3]) or (0.0, 0.0, 1.0, 1.0)
    shadow = Image.fromarray((fg[..., 3] * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(size / 60)
    )
    s = np.asarray(shadow, dtype=np.float32)[..., None] / 255.0
    rgb = rgb * (1 - rng.uniform(0.0, 0.45) * np.roll(s, max(1, h // 50), axis=0))
    rgb = _optics(_light(_over(rgb, fg), rng), size, rng)
    measured = max((box[2] - box[0]) * w, (box[3] - box[1]) * h) / max(w, h)
    turn = rng.random()
    quality = int(rng.integers(35, 86))
    if turn < EXIF_TURNED:
        orientation = 6 if rng.random() < 0.5 else 8
        return _encode(rgb, quality, orientation), box, measured, orientation
    if turn < EXIF_TURNED + PLAIN_TURNED:  # held sideways, no tag: the item lies on its side
        rgb = np.ascontiguousarray(np.rot90(rgb))  # 90 degrees counter-clockwise
        x0, y0, x1, y1 = box
        box = (y0, 1 - x1, y1, 1 - x0)
    return _encode(rgb, quality), box, measured, 1


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
        data, box, side, orientation = review_photo(listing, layer, size, rng, seed)
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
    day = paths.catalog_day(out, date)
    for name, table in (
        ("listings", pa.Table.from_pylist(rows, schema=LISTINGS_SCHEMA)),
        ("reviews", pa.Table.from_pylist(reviews, schema=REVIEWS_SCHEMA)),
    ):
        with storage.atomic_writer(storage.join(day, f"{name}.parquet")) as f:
            pq.write_table(table, f)
