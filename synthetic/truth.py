"""What a generated catalog knows that a real one does not: where the item is in each buyer photo.

Written beside the snapshots, outside the catalog contract (no stage reads it; benchmarks and
tests do)::

    OUT/truth/review_boxes.parquet   review_id, listing_id, image_uri, x0, y0, x1, y1, item_side,
                                     exif_orientation
    OUT/truth/listings.parquet       listing_id, product_id, design_id

A box is (x0, y0, x1, y1) in fractions of the photo as a viewer sees it (EXIF orientation
applied, as ``core.images.decode_image`` does); ``item_side`` is the box's longer side
over the frame's longer side (how small the item is in the photo). Listings with the same
``product_id`` sell the same product (another shop's listing); the same ``design_id`` means the
same design, perhaps in another colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import storage

REVIEW_BOXES = "truth/review_boxes.parquet"
LISTINGS = "truth/listings.parquet"

REVIEW_BOXES_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.string(), nullable=False),
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),  # relative to the catalog root
        pa.field("x0", pa.float32(), nullable=False),
        pa.field("y0", pa.float32(), nullable=False),
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("item_side", pa.float32(), nullable=False),
        pa.field("exif_orientation", pa.int8(), nullable=False),  # 1 = upright, 6/8 = turned
    ]
)
LISTINGS_SCHEMA = pa.schema(
    [
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("design_id", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class ReviewBox:
    review_id: str
    listing_id: str
    image_uri: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 fractions of the upright photo
    item_side: float
    exif_orientation: int = 1


def alpha_box(alpha: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight box of a drawn item's alpha > 0.5, as (x0, y0, x1, y1) fractions; None if empty."""
    ys, xs = np.nonzero(alpha > 0.5)
    if not len(xs):
        return None
    h, w = alpha.shape
    return (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def write_review_boxes(out: str, boxes: list[ReviewBox]) -> None:
    rows = sorted(boxes, key=lambda b: b.image_uri)
    table = pa.table(
        {
            "review_id": [b.review_id for b in rows],
            "listing_id": [b.listing_id for b in rows],
            "image_uri": [b.image_uri for b in rows],
            **{k: [b.box[i] for b in rows] for i, k in enumerate(("x0", "y0", "x1", "y1"))},
            "item_side": [b.item_side for b in rows],
            "exif_orientation": [b.exif_orientation for b in rows],
        },
        schema=REVIEW_BOXES_SCHEMA,
    )
    with storage.atomic_writer(storage.join(out, REVIEW_BOXES)) as f:
        pq.write_table(table, f)


def write_listing_products(out: str, rows: list[tuple[str, str, str]]) -> None:
    """(listing_id, product_id, design_id) per listing ever written."""
    table = pa.table(
        {k: [r[i] for r in rows] for i, k in enumerate(LISTINGS_SCHEMA.names)},
        schema=LISTINGS_SCHEMA,
    )
    with storage.atomic_writer(storage.join(out, LISTINGS)) as f:
        pq.write_table(table, f)


def read_review_boxes(catalog: str) -> dict[str, ReviewBox]:
    """Relative image URI -> its true box; empty when the catalog's generator recorded none."""
    uri = storage.join(catalog, REVIEW_BOXES)
    if not storage.exists(uri):
        return {}
    with storage.open_read(uri) as f:
        t = pq.read_table(f).to_pylist()
    return {
        r["image_uri"]: ReviewBox(
            r["review_id"],
            r["listing_id"],
            r["image_uri"],
            (r["x0"], r["y0"], r["x1"], r["y1"]),
            r["item_side"],
            r["exif_orientation"],
        )
        for r in t
    }
