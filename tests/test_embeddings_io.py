"""The Embedding Parquet contract: schema, atomic files, streaming current view, downstream reads."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vsearch.core import embeddings, paths, storage

DIM = 8
V = "20260101-test"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _row(lid: str, idx: int, sha: str, day: dt.date, seed: int) -> dict:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return {
        "listing_id": lid,
        "image_uri": f"gs://cat/images/{lid}/{idx}-{sha}.jpg",
        "image_index": idx,
        "image_sha256": sha,
        "model_version": V,
        "embedding": v / np.linalg.norm(v),
        "category_pred": "home/decor",
        "category_score": 0.5,
        "created_at": NOW,
    }


def _write_day(workdir: str, day: dt.date, rows: list[dict], shards: int = 2) -> None:
    for s in range(shards):
        part = [r for i, r in enumerate(rows) if i % shards == s]
        uri = storage.join(
            paths.embeddings_dir(workdir, V, day), paths.shard_name(s, shards, ".parquet")
        )
        embeddings.write_parquet(uri, [embeddings.to_record_batch(part, DIM)], DIM)


D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def _two_days(workdir: str) -> None:
    _write_day(
        workdir,
        D1,
        [_row("a", 0, "a0", D1, 1), _row("a", 1, "a1", D1, 2), _row("b", 0, "b0", D1, 3)],
    )
    # day 2: a#1 re-shot (new sha), c added; b is removed from the snapshot (no row needed for that)
    _write_day(workdir, D2, [_row("a", 1, "a1-new", D2, 4), _row("c", 0, "c0", D2, 5)])


def test_schema_is_the_contract() -> None:
    s = embeddings.schema(DIM)
    assert s.names == [
        "listing_id",
        "image_uri",
        "image_index",
        "image_sha256",
        "model_version",
        "embedding",
        "category_pred",
        "category_score",
        "created_at",
    ]
    # The day is the hive key of the path, never a file column; readers return it from the path.
    assert embeddings.current_schema(DIM).names == [*s.names, "dt"]
    assert embeddings.current_schema(DIM).field("dt").type == pa.date32()
    assert s.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert pa.types.is_fixed_size_list(s.field("embedding").type)
    assert s.field("image_index").type == pa.int16()
    assert s.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert s.field("category_score").type == pa.float32()


def test_wrong_dimension_is_a_clear_error() -> None:
    r = _row("a", 0, "x", D1, 1)
    r["embedding"] = np.ones(DIM + 1, dtype=np.float32)
    with pytest.raises(ValueError, match="has 9 dims, the model config says 8"):
        embeddings.to_record_batch([r], DIM)


def test_files_read_back_with_pyarrow_and_duckdb(tmp_path) -> None:
    workdir = str(tmp_path)
    _two_days(workdir)
    files = embeddings.partition_files(workdir, V)
    assert list(files) == [D1, D2]
    assert [storage.basename(u) for u in files[D1]] == [
        "part-00000-of-00002.parquet",
        "part-00001-of-00002.parquet",
    ]
    t = pq.read_table(files[D1][0])
    assert t.schema.equals(embeddings.schema(DIM))
    norms = np.linalg.norm(np.stack(t.column("embedding").to_numpy(zero_copy_only=False)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)
    # no temp or partial files next to the parts
    assert all(storage.basename(u).startswith("part-") for u in storage.list_prefix(workdir))

    import duckdb

    glob = storage.join(paths.embeddings_root(workdir, V), "*", "*.parquet")
    rows = duckdb.sql(
        f"SELECT listing_id, image_index, len(embedding) AS d, dt FROM read_parquet('{glob}') "
        "ORDER BY dt, listing_id, image_index"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("a", 0, 8),
        ("a", 1, 8),
        ("b", 0, 8),
        ("a", 1, 8),
        ("c", 0, 8),
    ]
    assert {r[3] for r in rows} == {D1, D2}


def test_current_view_streams_latest_row_per_snapshot_image(tmp_path) -> None:
    workdir = str(tmp_path)
    _two_days(workdir)
    snapshot = {("a", 0), ("a", 1), ("c", 0)}  # b removed on day 2; a plain set: newest row wins
    batches = list(
        embeddings.read_current_embeddings(
            "unused", workdir, D2, V, batch_size=1, image_keys=snapshot
        )
    )
    assert all(b.num_rows == 1 for b in batches)  # streamed, never more than batch_size rows
    got = {
        (r["listing_id"], r["image_index"]): r["image_sha256"]
        for b in batches
        for r in b.to_pylist()
    }
    assert got == {("a", 0): "a0", ("a", 1): "a1-new", ("c", 0): "c0"}
    # as of day 1 the day-2 partition does not count
    day1 = embeddings.read_current_embeddings(
        "unused", workdir, D1, V, image_keys={("a", 1), ("b", 0)}
    )
    assert {(r["listing_id"], r["image_sha256"]) for b in day1 for r in b.to_pylist()} == {
        ("a", "a1"),
        ("b", "b0"),
    }


def test_photo_changed_back_gets_its_old_row(tmp_path) -> None:
    """A -> B -> A: day 3 writes nothing (A is known) and the current view must show A again."""
    workdir = str(tmp_path)
    _write_day(workdir, D1, [_row("a", 0, "A", D1, 1), _row("b", 0, "b0", D1, 2)])
    _write_day(workdir, D2, [_row("a", 0, "B", D2, 3)])
    uri_a = _row("a", 0, "A", D1, 1)["image_uri"]
    b_moved = "gs://cat/images/b/moved.jpg"  # same bytes under a new URI: skipped, old row stays
    current = embeddings.read_current_embeddings(
        "unused", workdir, D3, V, image_keys={("a", 0): uri_a, ("b", 0): b_moved}
    )
    rows = {r["listing_id"]: r["image_sha256"] for b in current for r in b.to_pylist()}
    assert rows == {"a": "A", "b": "b0"}


def test_existing_keys_inclusive_and_exclusive(tmp_path) -> None:
    workdir = str(tmp_path)
    _two_days(workdir)

    def keys(**kw) -> set:
        return {
            (r["listing_id"], r["image_index"], r["image_sha256"])
            for b in embeddings.existing_keys(workdir, V, D2, **kw)
            for r in b.to_pylist()
        }

    assert keys() == {
        ("a", 0, "a0"),
        ("a", 1, "a1"),
        ("b", 0, "b0"),
        ("a", 1, "a1-new"),
        ("c", 0, "c0"),
    }
    assert keys(inclusive=False) == {("a", 0, "a0"), ("a", 1, "a1"), ("b", 0, "b0")}
    assert list(embeddings.existing_keys(workdir, "other-model", D3)) == []


def test_gcs_round_trip(gcs_bucket: str) -> None:
    _two_days(gcs_bucket)
    table = pa.Table.from_batches(
        embeddings.read_current_embeddings(
            "unused", gcs_bucket, D2, V, image_keys={("a", 1), ("c", 0)}
        )
    )
    assert table.schema.equals(embeddings.current_schema(DIM))
    assert sorted(table.column("image_sha256").to_pylist()) == ["a1-new", "c0"]
