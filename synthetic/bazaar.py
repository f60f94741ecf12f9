"""A second catalog style, drawn by independent code: a flea-market ("bazaar") catalog.

Why a second generator: every quality default (gate margins, auto-PCA, the no-match threshold)
must hold on catalogs we did not tune it on. This one shares nothing with ``products`` /
``photos`` / ``render`` except the snapshot format (DESIGN.md "Catalog snapshot"):

* other taxonomy: 16 categories under 5 top-level departments, two levels deep or three, with a
  heavy-tailed (Zipf) category mix, so rare categories have a handful of listings;
* other drawing: flat Pillow vector art (polygons, patterns: stripes, dots, checks, zigzag), not
  shaded silhouettes; colour names from another palette; "material" is the surface pattern;
* other counts: 1-6 photos per listing, 0-4 review photos;
* other degradations for buyer photos: perspective warp, motion blur, low light with sensor
  noise, a colour cast, clutter on the background, heavy JPEG (quality 25-60), off-centre crops.

Layout written (same contract as ``generate``)::

    OUT/dt=YYYY-MM-DD/listings.parquet, reviews.parquet
    OUT/images/B00123/<k>.jpg, OUT/images/reviews/B00123-<k>.jpg

Every draw comes from ``numpy.random.default_rng([seed, listing, purpose, ...])``, so the output
is byte-identical for the same arguments. Each later day removes ~3 % of listings and adds ~4 %.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from core import storage
from synthetic import tables

# (category path, base shape). Zipf-like weights: the first categories dominate.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("apparel/tshirt", "tshirt"),
    ("apparel/scarf", "scarf"),
    ("apparel/bags/tote", "tote"),
    ("home/rug", "rug"),
    ("home/lamps/pendant", "pendant"),
    ("home/cushion", "cushion"),
    ("art/poster", "poster"),
    ("art/ceramics/plate", "plate"),
    ("art/ceramics/vase", "vase"),
    ("play/kite", "kite"),
    ("play/ball", "ball"),
    ("play/blocks/cube", "cube"),
    ("outdoor/umbrella", "umbrella"),
    ("outdoor/flag", "flag"),
    ("outdoor/planter", "planter"),
    ("misc/clock", "clock"),
)
_WEIGHTS = 1.0 / np.arange(1, len(CATEGORIES) + 1) ** 0.8
PALETTE: dict[str, tuple[int, int, int]] = {
    "navy": (24, 38, 92),
    "teal": (20, 128, 128),
    "mustard": (214, 170, 40),
    "burgundy": (120, 20, 44),
    "olive": (110, 118, 40),
    "coral": (240, 110, 90),
    "cream": (238, 228, 200),
    "charcoal": (54, 56, 60),
    "lavender": (170, 150, 210),
}
PATTERNS = ("solid", "stripes", "dots", "checks", "zigzag")
SIZES = ("small", "medium", "large")
NULL_FRACTION = 0.15
REMOVE_FRACTION, ADD_FRACTION = 0.03, 0.04
SPEC, STUDIO, REVIEW = 11, 12, 13  # rng streams, distinct from the first generator's


@dataclass(frozen=True)
class Item:
    num: int
    category: str
    shape: str
    color: str
    accent: str
    pattern: str
    size: str
    phase: float  # where the pattern starts: tells two otherwise equal items apart
    mark: int  # a small maker's mark drawn on the item (0-5)
    photos: int
    reviews: int


def listing_id(num: int) -> str:
    return f"B{num:05d}"


def draw_item(seed: int, num: int) -> Item:
    rng = np.random.default_rng([seed, num, SPEC])
    cat = int(rng.choice(len(CATEGORIES), p=_WEIGHTS / _WEIGHTS.sum()))
    colors = list(PALETTE)
    color, accent = rng.choice(len(colors), size=2, replace=False)
    return Item(
        num=num,
        category=CATEGORIES[cat][0],
        shape=CATEGORIES[cat][1],
        color=colors[int(color)],
        accent=colors[int(accent)],
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        size=SIZES[int(rng.integers(len(SIZES)))],
        phase=float(rng.random()),
        mark=int(rng.integers(6)),
        photos=int(rng.integers(1, 7)),
        reviews=int(rng.choice(5, p=[0.25, 0.3, 0.25, 0.12, 0.08])),
    )


def _outline(shape: str, n: int) -> list[tuple[float, float]]:
    """The item's outline on an n x n canvas, as a polygon."""
    c, r = n / 2, n * 0.38
    if shape in ("ball", "plate", "clock", "pendant"):
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        sy = 0.6 if shape == "pendant" else 1.0
        return [(c + r * np.cos(a), c + r * sy * np.sin(a)) for a in t]
    polys = {
        "tshirt": [
            (0.3, 0.15),
            (0.7, 0.15),
            (0.95, 0.35),
            (0.8, 0.45),
            (0.75, 0.4),
            (0.75, 0.9),
            (0.25, 0.9),
            (0.25, 0.4),
            (0.2, 0.45),
            (0.05, 0.35),
        ],
        "scarf": [(0.1, 0.4), (0.9, 0.3), (0.9, 0.5), (0.1, 0.6)],
        "tote": [(0.2, 0.35), (0.8, 0.35), (0.85, 0.9), (0.15, 0.9)],
        "rug": [(0.08, 0.25), (0.92, 0.25), (0.92, 0.75), (0.08, 0.75)],
        "cushion": [(0.15, 0.2), (0.85, 0.15), (0.8, 0.85), (0.2, 0.8)],
        "poster": [(0.25, 0.08), (0.75, 0.08), (0.75, 0.92), (0.25, 0.92)],
        "vase": [
            (0.4, 0.1),
            (0.6, 0.1),
            (0.58, 0.25),
            (0.75, 0.55),
            (0.62, 0.92),
            (0.38, 0.92),
            (0.25, 0.55),
            (0.42, 0.25),
        ],
        "kite": [(0.5, 0.05), (0.85, 0.4), (0.5, 0.95), (0.15, 0.4)],
        "cube": [(0.2, 0.3), (0.5, 0.15), (0.8, 0.3), (0.8, 0.7), (0.5, 0.85), (0.2, 0.7)],
        "umbrella": [(0.05, 0.55), (0.2, 0.3), (0.5, 0.15), (0.8, 0.3), (0.95, 0.55)],
        "flag": [(0.15, 0.15), (0.85, 0.2), (0.8, 0.5), (0.15, 0.55)],
        "planter": [(0.2, 0.35), (0.8, 0.35), (0.7, 0.9), (0.3, 0.9)],
    }[shape]
    return [(x * n, y * n) for x, y in polys]


def _pattern(item: Item, n: int) -> Image.Image:
    """The item's surface: its colour with the accent drawn in its pattern."""
    base = Image.new("RGB", (n, n), PALETTE[item.color])
    d = ImageDraw.Draw(base)
    acc = PALETTE[item.accent]
    step = max(4, n // 10)
    off = int(item.phase * step)
    if item.pattern == "stripes":
        for x in range(-n, 2 * n, step):
            d.polygon(
                [
                    (x + off, 0),
                    (x + off + step // 2, 0),
                    (x + off + step // 2 - n, n),
                    (x + off - n, n),
                ],
                fill=acc,
            )
    elif item.pattern == "dots":
        for y in range(off, n, step):
            for x in range((y // step % 2) * step // 2 + off, n, step):
                d.ellipse([x - step // 5, y - step // 5, x + step // 5, y + step // 5], fill=acc)
    elif item.pattern == "checks":
        for y in range(0, n, step):
            for x in range(0, n, step):
                if ((x + y + off * step) // step) % 2:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=acc)
    elif item.pattern == "zigzag":
        for y in range(off, n, step):
            pts = [(x, y + (step // 3 if (x // step) % 2 else 0)) for x in range(0, n + step, step)]
            d.line(pts, fill=acc, width=max(2, step // 4))
    # The maker's mark: a small shape in a fixed corner, the same on every photo of the item.
    m = n // 8
    box = [n * 0.55, n * 0.55, n * 0.55 + m, n * 0.55 + m]
    fill = acc if item.mark < 3 else (250, 250, 250)
    if item.mark % 3 == 0:
        d.rectangle(box, fill=fill)
    elif item.mark % 3 == 1:
        d.ellipse(box, fill=fill)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)
    return base


def render_item(item: Item, n: int, background: tuple[int, int, int]) -> Image.Image:
    scale = {"small": 0.75, "medium": 0.9, "large": 1.0}[item.size]
    inner = max(16, int(n * scale))
    mask = Image.new("L", (inner, inner), 0)
    ImageDraw.Draw(mask).polygon(_outline(item.shape, inner), fill=255)
    canvas = Image.new("RGB", (n, n), background)
    at = ((n - inner) // 2, (n - inner) // 2)
    canvas.paste(_pattern(item, inner), at, mask)
    return canvas


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def studio_photo(seed: int, item: Item, k: int, size: int) -> bytes:
    """A seller photo: a plain light background, small zoom and rotation per view."""
    rng = np.random.default_rng([seed, item.num, STUDIO, k])
    bg = tuple(int(v) for v in rng.integers(215, 256, size=3))
    big = render_item(item, int(size * rng.uniform(1.0, 1.25)), bg)  # type: ignore[arg-type]
    big = big.rotate(float(rng.uniform(-8, 8)), fillcolor=bg, resample=Image.Resampling.BILINEAR)  # type: ignore[arg-type]
    off = (big.width - size) // 2
    return _jpeg(big.crop((off, off, off + size, off + size)), 92)


def review_photo(seed: int, item: Item, k: int, size: int) -> bytes:
    """A buyer photo: cluttered background, perspective, blur, low light, noise, cast, crop."""
    rng = np.random.default_rng([seed, item.num, REVIEW, k])
    n = int(size * 1.4)
    bg = tuple(int(v) for v in rng.integers(40, 200, size=3))
    img = render_item(item, int(n * rng.uniform(0.6, 0.85)), bg)  # type: ignore[arg-type]
    scene = Image.new("RGB", (n, n), bg)  # type: ignore[arg-type]
    d = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(3, 9))):  # clutter: other things on the table
        x, y, w = (int(v) for v in rng.integers(0, n, size=3))
        d.rectangle(
            [x, y, x + w // 3, y + w // 4], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
        )
    at = tuple(int(v) for v in rng.integers(0, n - img.width + 1, size=2))
    scene.paste(img, at)  # type: ignore[arg-type]
    # Perspective: a random quad of the scene mapped to the square.
    j = n * 0.12
    quad = [
        float(v)
        for v in (
            rng.uniform(0, j),
            rng.uniform(0, j),
            rng.uniform(0, j),
            n - rng.uniform(0, j),
            n - rng.uniform(0, j),
            n - rng.uniform(0, j),
            n - rng.uniform(0, j),
            rng.uniform(0, j),
        )
    ]
    scene = scene.transform((n, n), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR)
    if rng.random() < 0.6:
        scene = scene.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    px = np.asarray(scene, dtype=np.float32)
    px *= rng.uniform(0.45, 1.05)  # low light
    px *= rng.uniform(0.85, 1.15, size=3)  # colour cast
    px += rng.normal(0, rng.uniform(2, 14), size=px.shape)  # sensor noise
    scene = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
    c = int(n * rng.uniform(0.75, 0.95))
    x0, y0 = (int(v) for v in rng.integers(0, n - c + 1, size=2))
    scene = scene.crop((x0, y0, x0 + c, y0 + c)).resize((size, size), Image.Resampling.BILINEAR)
    return _jpeg(scene, int(rng.integers(25, 61)))


def generate_bazaar_catalog(
    out: str,
    listings: int,
    days: int,
    seed: int,
    image_size: int = 128,
    start_date: dt.date = dt.date(2026, 1, 1),
) -> list[int]:
    """Write ``days`` daily snapshots under ``out``; returns the listing count of each day."""
    if listings < 1 or days < 1:
        raise ValueError(f"listings and days must be >= 1, got {listings} and {days}")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image size must be in 16..1024, got {image_size}")
    out = storage.normalize(out)
    alive = list(range(listings))
    next_num, counts = listings, []
    rendered: set[int] = set()
    for d in range(days):
        if d:
            rng = np.random.default_rng([seed, 1_000_007, d])
            gone = set(
                rng.choice(alive, size=int(len(alive) * REMOVE_FRACTION), replace=False).tolist()
            )
            alive = [n for n in alive if n not in gone]
            add = max(1, int(len(alive) * ADD_FRACTION))
            alive += list(range(next_num, next_num + add))
            next_num += add
        rows, reviews = [], []
        for num in alive:
            item = draw_item(seed, num)
            lid = listing_id(num)
            uris = [f"images/{lid}/{k}.jpg" for k in range(item.photos)]
            rev = [f"images/reviews/{lid}-{k}.jpg" for k in range(item.reviews)]
            if num not in rendered:
                for k, uri in enumerate(uris):
                    storage.write_bytes(
                        storage.join(out, uri), studio_photo(seed, item, k, image_size)
                    )
                for k, uri in enumerate(rev):
                    storage.write_bytes(
                        storage.join(out, uri), review_photo(seed, item, k, image_size)
                    )
                rendered.add(num)
            nulls = np.random.default_rng([seed, num, SPEC, 1]).random(3) < NULL_FRACTION
            rows.append(
                {
                    "listing_id": lid,
                    "image_uris": uris,
                    "title": f"{item.size} {item.color} {item.pattern} {item.shape}",
                    "category": item.category,
                    "color": None if nulls[0] else item.color,
                    "shape": None if nulls[1] else item.size,
                    "material": None if nulls[2] else item.pattern,
                    "updated_at": dt.datetime(
                        start_date.year, start_date.month, start_date.day, tzinfo=dt.UTC
                    ),
                }
            )
            reviews += [
                {"review_id": f"{lid}-r{k}", "listing_id": lid, "image_uri": u}
                for k, u in enumerate(rev)
            ]
        tables.write_day(
            out,
            start_date + dt.timedelta(days=d),
            pa.Table.from_pylist(rows),
            pa.Table.from_pylist(reviews),
        )
        counts.append(len(alive))
    return counts
