"""Embedding tables with the Parquet contract's columns, made from plain vectors: the index
tests' and the benchmarks' input (test data, so it lives beside the benchmark vector sets, not in
index/).

Vector i belongs to listing ``L{i // images_per_listing:08d}``, image ``i % images_per_listing``,
so the images of a listing are consecutive rows; categories cycle through a few names.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from index.source import BatchesFactory

CATEGORIES = ("home/decor", "jewelry/rings", "clothing/shirts", "art/prints")


def listing_id(i: int, images_per_listing: int = 1) -> str:
    return f"L{i // images_per_listing:08d}"


def embedding_table(
    vectors: np.ndarray, images_per_listing: int = 1, model_version: str = "test-model"
) -> pa.Table:
    n, dim = vectors.shape
    rows = np.arange(n)
    listing = [listing_id(int(i), images_per_listing) for i in rows]
    image_index = (rows % images_per_listing).astype(np.int16)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.table(
        {
            "listing_id": pa.array(listing, pa.string()),
            "image_uri": pa.array(
                [
                    f"mem://images/{lid}/{ix}.jpg"
                    for lid, ix in zip(listing, image_index, strict=True)
                ]
            ),
            "image_index": pa.array(image_index, pa.int16()),
            "model_version": pa.array([model_version] * n, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            "category_pred": pa.array(
                [CATEGORIES[(i // images_per_listing) % len(CATEGORIES)] for i in rows]
            ),
        }
    )


def batches_factory(table: pa.Table, batch_size: int = 4096) -> BatchesFactory:
    """A factory returning a fresh iterator over ``table``'s batches on every call."""

    def make() -> Iterator[pa.RecordBatch]:
        yield from table.to_batches(max_chunksize=batch_size)

    return make
