"""WriteEmbeddings and WriteState on the real DirectRunner: tables of rows (one per model batch,
in any order) become shard files in which every listing sits in one shard, rows are sorted by
(listing_id, image_index), and every row is written once; read back with pyarrow."""

from __future__ import annotations

import datetime as dt
import glob

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import embeddings, embedstate
from transforms.change_detection import bucket_of
from transforms.embedding_writer import WriteEmbeddings, WriteState, shard_of, state_table
from transforms.packed_table import PackedTable

pytestmark = pytest.mark.timeout(120)
DIM = 8
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _batch(rows: list[tuple[str, int]]) -> PackedTable:
    rng = np.random.default_rng(len(rows))
    batch = embeddings.from_columns(
        rng.normal(size=(len(rows), DIM)).astype(np.float32),
        {
            "listing_id": [lid for lid, _ in rows],
            "image_uri": [f"images/{lid}/{k}.jpg" for lid, k in rows],
            "image_index": [k for _, k in rows],
            "image_sha256": [f"{lid}-{k}" for lid, k in rows],
            "model_version": ["m"] * len(rows),
            "category_pred": ["c"] * len(rows),
            "category_score": [0.5] * len(rows),
            "created_at": [WHEN] * len(rows),
        },
    )
    return PackedTable(pa.Table.from_batches([batch]))


def test_tables_become_sorted_shards_with_each_listing_in_one(tmp_path) -> None:
    # Photos of one listing arrive in different batches, out of order.
    keys = [(f"L{i:03d}", k) for i in range(40) for k in range(3)]
    order = np.random.default_rng(1).permutation(len(keys))
    shuffled = [keys[i] for i in order]
    batches = [_batch(shuffled[i : i + 16]) for i in range(0, len(shuffled), 16)]
    out = str(tmp_path / "rows")
    with beam.Pipeline() as p:
        _ = (
            p
            | beam.Create(batches)
            | WriteEmbeddings(str(tmp_path), "m", "2026-01-01", DIM, 3, directory=out)
        )
    files = sorted(glob.glob(f"{out}/part-*.parquet"))
    assert [f.rsplit("/", 1)[1] for f in files] == [
        f"part-{s:05d}-of-00003.parquet" for s in range(3)
    ]
    seen: list[tuple[str, int]] = []
    for shard, f in enumerate(files):
        t = pq.read_table(f)
        assert t.schema.equals(embeddings.schema(DIM))
        rows = list(zip(t["listing_id"].to_pylist(), t["image_index"].to_pylist(), strict=True))
        assert rows == sorted(rows)
        assert {shard_of(lid, 3) for lid, _ in rows} == {shard}
        seen += rows
    assert sorted(seen) == sorted(keys)


def test_state_tables_are_written_one_file_per_bucket(tmp_path) -> None:
    rows = [
        {
            "listing_id": f"L{i}",
            "image_index": 0,
            "image_uri": f"u{i}",
            "meta_key": f"k{i}",
            "image_sha256": f"s{i}",
        }
        for i in range(30)
    ]
    out = str(tmp_path / "state")
    with beam.Pipeline() as p:
        _ = p | beam.Create([state_table(rows[:17]), state_table(rows[17:])]) | WriteState(out, 4)
    written = []
    for f in sorted(glob.glob(f"{out}/read-*.parquet")):
        t = pq.read_table(f)
        bucket = embedstate.file_bucket(f, 4)
        assert bucket is not None
        assert {bucket_of(lid, 4) for lid in t["listing_id"].to_pylist()} == {bucket}
        assert t["listing_id"].to_pylist() == sorted(t["listing_id"].to_pylist())
        written += t.to_pylist()
    assert sorted(written, key=lambda r: r["listing_id"]) == sorted(
        rows, key=lambda r: r["listing_id"]
    )
