"""The Embedding Parquet contract: schema, atomic files, streaming current view, downstream reads."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import embeddings, paths, storage

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


# ------------------------------------------------------------------ every reader opens the folder


def _publish_day(workdir: str, day: dt.date, rows: list[dict], shards: int) -> None:
    """Write and commit a partition the way the embed job does (staging + partitions.publish)."""
    from core import partitions

    staged = paths.staging_dir(workdir, "embed", day, f"t{shards}")
    files = []
    for s in range(shards):
        part = rows[s::shards]
        uri = storage.join(staged, paths.shard_name(s, shards, ".parquet"))
        files.append(
            (uri, embeddings.write_parquet(uri, [embeddings.to_record_batch(part, DIM)], DIM))
        )
    partitions.publish(staged, paths.embeddings_dir(workdir, V, day), f"t{shards}", files)


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    """DuckDB returns the fixed-size embedding as list<float> (Parquet stores it as a list; the
    size lives in Arrow's own schema metadata) and names UTC "Etc/UTC": the same values."""
    if got == want:
        return True
    if pa.types.is_fixed_size_list(want) and pa.types.is_list(got):
        return bool(got.value_type == want.value_type)
    if pa.types.is_timestamp(want) and pa.types.is_timestamp(got):
        return bool(got.unit == want.unit and {got.tz, want.tz} <= {"UTC", "Etc/UTC"})
    return False


def _readme_sql(catalog: str, workdir: str, day: dt.date) -> str:
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    formats = os.path.join(repo, "docs", "formats.md")  # the embeddings contract, moved from README
    text = open(formats, encoding="utf-8").read()
    block = text.split("<!-- current-embeddings-sql -->", 1)[1].split("```sql", 1)[1]
    sql = block.split("```", 1)[0]
    return sql.format(catalog=catalog, workdir=workdir, version=V, day=day.isoformat())


def test_every_reader_opens_the_folder_and_the_readme_sql_is_the_package_reader(tmp_path) -> None:
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    from synthetic.tables import LISTINGS_SCHEMA

    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")

    def row(lid: str, idx: int, sha: str, day: dt.date, seed: int, name: str = "") -> dict:
        r = _row(lid, idx, sha, day, seed)
        r["image_uri"] = f"images/{name or f'{lid}-{idx}-{sha}'}.jpg"  # as the embed job names it
        return r

    _publish_day(
        workdir,
        D1,
        [row("a", 0, "a0", D1, 1), row("a", 1, "a1", D1, 2), row("b", 0, "b0", D1, 3)]
        + [row("d", 0, "d0", D1, 6, name="d-0")],
        shards=3,
    )
    # Day 2: a#1 re-shot at a new URI, d#0 new bytes at the same URI, c added, b removed.
    _publish_day(
        workdir,
        D2,
        [
            row("a", 1, "a1-new", D2, 4),
            row("c", 0, "c0", D2, 5),
            row("d", 0, "d0-new", D2, 7, "d-0"),
        ],
        shards=2,
    )
    snapshot = {
        "a": ["images/a-0-a0.jpg", "images/a-1-a1-new.jpg"],
        "c": ["images/c-0-c0.jpg"],
        "d": ["images/d-0.jpg"],
    }
    ids = sorted(snapshot)
    n = len(ids)
    listings = pa.table(
        {
            "listing_id": ids,
            "image_uris": [snapshot[i] for i in ids],
            "title": ["t"] * n,
            "category": ["home/decor"] * n,
            "color": [None] * n,
            "shape": [None] * n,
            "material": [None] * n,
            "updated_at": [None] * n,
        },
        schema=LISTINGS_SCHEMA,
    )
    storage.write_bytes(storage.join(paths.catalog_day(catalog, D2), "listings.parquet"), b"")
    pq.write_table(listings, storage.join(paths.catalog_day(catalog, D2), "listings.parquet"))

    # Every reader opens the plain folder with no options and they agree.
    root = paths.embeddings_root(workdir, V)
    by_pandas = pd.read_parquet(root)
    by_pq = pq.read_table(root)
    by_ds = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    by_duck = duckdb.sql(
        f"SELECT * FROM read_parquet('{root}/dt=*/*.parquet', hive_partitioning=true)"
    ).arrow()
    if not isinstance(by_duck, pa.Table):  # duckdb 1.4+ returns a reader
        by_duck = by_duck.read_all()
    assert len(by_pandas) == by_pq.num_rows == by_ds.num_rows == by_duck.num_rows == 7
    for t in (by_pq, by_ds, by_duck):
        assert sorted(map(str, set(t["dt"].to_pylist()))) == ["2026-01-01", "2026-01-02"]
        for f in embeddings.schema(DIM):
            assert _same_type(t.schema.field(f.name).type, f.type), (f.name, t.schema)
    assert sorted(by_pandas["listing_id"]) == sorted(by_duck["listing_id"].to_pylist())

    # docs/formats.md's query returns what the package's one call returns.
    package = embeddings.read_current_table(catalog, workdir, D2, V)
    assert package.num_rows == 4 and "b" not in package["listing_id"].to_pylist()
    sql = duckdb.sql(_readme_sql(catalog, workdir, D2)).arrow()
    if not isinstance(sql, pa.Table):
        sql = sql.read_all()
    cols = ["listing_id", "image_index", "image_uri", "image_sha256", "dt"]
    assert sql.select(cols).to_pylist() == package.select(cols).to_pylist()
    np.testing.assert_array_equal(
        np.stack(sql["embedding"].to_numpy(zero_copy_only=False)),
        np.stack(package["embedding"].to_numpy(zero_copy_only=False)),
    )
    assert {r["image_sha256"] for r in package.to_pylist() if r["listing_id"] == "d"} == {"d0-new"}


def test_full_disk_is_one_clear_error_naming_the_file(tmp_path, monkeypatch) -> None:
    import contextlib

    @contextlib.contextmanager
    def full_device(uri: str):
        with open("/dev/full", "wb", buffering=0) as f:  # every write: ENOSPC from the kernel
            yield f

    monkeypatch.setattr(storage, "atomic_writer", full_device)
    uri = str(tmp_path / "part-00000-of-00001.parquet")
    with pytest.raises(OSError, match=r"no space left on the device while writing .*part-00000"):
        embeddings.write_parquet(
            uri, [embeddings.to_record_batch([_row("a", 0, "x", D1, 1)], DIM)], DIM
        )


def test_files_written_before_dt_left_the_files_still_read(tmp_path) -> None:
    """A partition written by an older version (``dt`` inside the file) reads as before."""
    workdir = str(tmp_path)
    batch = embeddings.to_record_batch([_row("a", 0, "a0", D1, 1)], DIM)
    legacy = pa.Table.from_batches([batch]).append_column("dt", pa.array([D1], pa.date32()))
    part = storage.join(paths.embeddings_dir(workdir, V, D1), "part-00000-of-00001.parquet")
    storage.write_bytes(part, b"")
    pq.write_table(legacy, part)
    table = pa.Table.from_batches(
        embeddings.read_current_embeddings("unused", workdir, D1, V, image_keys={("a", 0)})
    )
    assert table.schema.equals(embeddings.current_schema(DIM))
    assert table["dt"].to_pylist() == [D1] and table["image_sha256"].to_pylist() == ["a0"]


def test_committed_partitions_cost_one_manifest_read_per_day_on_gcs(gcs_bucket, monkeypatch):
    """Every run starts by reading which partitions are committed (a year of days is ~365): on
    gs:// each day costs one manifest read, never an existence check too (the listing already
    says whether there is a manifest), and the reads overlap instead of waiting in series."""
    import threading
    import time

    from core import partitions

    workdir = storage.join(gcs_bucket, "w")
    days = [D1 + dt.timedelta(days=i) for i in range(20)]
    for i, day in enumerate(days):
        staged = paths.staging_dir(workdir, "embed", day, f"a{i}")
        uri = storage.join(staged, paths.shard_name(0, 1, ".parquet"))
        batch = embeddings.to_record_batch([_row(f"l{i}", 0, f"s{i}", day, i)], DIM)
        embeddings.write_parquet(uri, [batch], DIM)
        partitions.publish(staged, paths.embeddings_dir(workdir, V, day), f"a{i}", [(uri, 1)])
    legacy = D1 - dt.timedelta(days=1)  # written before manifests: its part files, no commit id
    _write_day(workdir, legacy, [_row("old", 0, "o", legacy, 99)], shards=1)

    exists_calls: list[str] = []
    reads: list[str] = []
    in_flight, most = [0], [0]
    lock = threading.Lock()
    real_read = storage.read_bytes

    def counting_read(uri: str) -> bytes:
        with lock:
            reads.append(uri)
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.02)  # a round trip to a real bucket takes tens of ms
        try:
            return real_read(uri)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(storage, "exists", lambda u: exists_calls.append(u) or True)
    monkeypatch.setattr(storage, "read_bytes", counting_read)
    got = embeddings.committed_partitions(workdir, V)

    assert list(got) == [legacy, *days]
    assert got[legacy].commit == "" and [storage.basename(u) for u in got[legacy].files] == [
        "part-00000-of-00001.parquet"
    ]
    for i, day in enumerate(days):
        assert got[day].commit == f"a{i}"
        assert len(got[day].files) == 1 and got[day].files[0].endswith(".parquet")
    assert exists_calls == []
    assert sorted(reads) == sorted(
        storage.join(paths.embeddings_dir(workdir, V, d), partitions.MANIFEST) for d in days
    )
    assert most[0] > 1  # the manifests were read concurrently
