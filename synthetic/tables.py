"""A day's catalog tables as every style writes them: the two schemas (DESIGN.md "Catalog
snapshot") and the writer of ``OUT/dt=YYYY-MM-DD/{listings,reviews}.parquet``."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from core import paths, storage

LISTINGS_SCHEMA = pa.schema(
    [
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("image_uris", pa.list_(pa.string()), nullable=False),
        pa.field("title", pa.string()),
        pa.field("category", pa.string(), nullable=False),
        pa.field("color", pa.string()),
        pa.field("shape", pa.string()),
        pa.field("material", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
REVIEWS_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.string(), nullable=False),
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
    ]
)


def write_day(out: str, date: dt.date, listings: pa.Table, reviews: pa.Table) -> None:
    """Both tables of the snapshot of ``date`` under catalog root ``out``, each written whole or
    not at all (a reader never sees half a file)."""
    day = paths.catalog_day(out, date)
    for name, table in (("listings", listings), ("reviews", reviews)):
        with storage.atomic_writer(storage.join(day, f"{name}.parquet")) as f:
            pq.write_table(table, f, compression="snappy")
