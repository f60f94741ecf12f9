"""A day's partition is committed as a whole: kill -9 inside publishing never shows a mix.

Each case runs ``partitions.publish`` in a real subprocess that SIGKILLs itself just before one
step of the protocol, with an old partition of 3 shards being replaced by a new one of 2 shards;
then every reader (pandas and DuckDB on the plain folder locally, the package's manifest reader on
both filesystems) must see exactly the old rows or exactly the new rows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from core import embeddings, partitions, paths, storage

DIM = 4
V = "20260101-commit"
DAY = dt.date(2026, 1, 5)
NOW = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


def _rows(tag: str, n: int) -> list[dict]:
    v = np.ones(DIM, np.float32) / 2
    return [
        {
            "listing_id": f"{tag}{i:03d}",
            "image_uri": f"gs://c/{tag}{i}.jpg",
            "image_index": 0,
            "image_sha256": f"{tag}{i}",
            "model_version": V,
            "embedding": v,
            "category_pred": "a/b",
            "category_score": 0.5,
            "created_at": NOW,
        }
        for i in range(n)
    ]


def stage_and_publish(workdir: str, tag: str, shards: int, kill_at: str = "") -> None:
    """Stage ``shards`` files of 12 rows tagged ``tag`` and publish them (the subprocess body)."""
    staged = paths.staging_dir(workdir, "embed", DAY, tag)
    rows = _rows(tag, 12)
    files = []
    for s in range(shards):
        uri = storage.join(staged, paths.shard_name(s, shards, ".parquet"))
        part = rows[s::shards]
        embeddings.write_parquet(uri, [embeddings.to_record_batch(part, DIM)], DIM)
        files.append((uri, len(part)))

    def step(name: str) -> None:
        if kill_at and name.startswith(kill_at):
            os.kill(os.getpid(), 9)

    partitions.publish(staged, paths.embeddings_dir(workdir, V, DAY), tag, files, step=step)


def _publish_in_subprocess(workdir: str, tag: str, shards: int, kill_at: str) -> int:
    code = (
        "import sys; from tests.test_partition_commit import stage_and_publish as f; "
        "f(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, workdir, tag, str(shards), kill_at],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=os.environ.copy(),
        check=False,
    ).returncode


def _package_ids(workdir: str) -> list[str]:
    files = embeddings.partition_files(workdir, V).get(DAY, [])
    batches = (b for u in files for b in embeddings.iter_key_batches(u))
    return sorted(lid for b in batches for lid in b.column("listing_id").to_pylist())


OLD = sorted(f"old{i:03d}" for i in range(12))
NEW = sorted(f"new{i:03d}" for i in range(12))


@pytest.mark.parametrize("kill_at", ["manifest", "swap", "cleanup", ""])
def test_kill_inside_local_publish(tmp_path, kill_at: str) -> None:
    workdir = str(tmp_path)
    stage_and_publish(workdir, "old", 3)
    rc = _publish_in_subprocess(workdir, "new", 2, kill_at)
    assert rc == (-9 if kill_at else 0)
    root = paths.embeddings_root(workdir, V)
    # pandas and DuckDB on the plain folder, no options, and the package's reader agree.
    seen_pandas = sorted(pd.read_parquet(root)["listing_id"])
    import duckdb

    seen_duckdb = sorted(
        r[0]
        for r in duckdb.sql(
            f"SELECT listing_id FROM read_parquet('{root}/dt=*/*.parquet', hive_partitioning=true)"
        ).fetchall()
    )
    expected = NEW if kill_at in ("cleanup", "") else OLD
    assert seen_pandas == seen_duckdb == _package_ids(workdir) == expected
    # A later run of the day publishes over whatever the crash left.
    stage_and_publish(workdir, "newer", 2)
    assert sorted(pd.read_parquet(root)["listing_id"]) == sorted(f"newer{i:03d}" for i in range(12))


@pytest.mark.parametrize(
    "kill_at", ["copy part-00000", "copy part-00001", "manifest", "cleanup", ""]
)
def test_kill_inside_gcs_publish(gcs_bucket, kill_at: str) -> None:
    workdir = storage.join(gcs_bucket, "work")
    stage_and_publish(workdir, "old", 3)
    rc = _publish_in_subprocess(workdir, "new", 2, kill_at)
    assert rc == (-9 if kill_at else 0)
    expected = NEW if kill_at in ("cleanup", "") else OLD
    assert _package_ids(workdir) == expected
    stage_and_publish(workdir, "newer", 2)
    assert _package_ids(workdir) == sorted(f"newer{i:03d}" for i in range(12))
    # After a complete publish the plain folder holds exactly the committed files.
    part = paths.embeddings_dir(workdir, V, DAY)
    assert sorted(storage.basename(u) for u in storage.list_prefix(part)) == sorted(
        [partitions.MANIFEST]
        + [storage.basename(u) for u in embeddings.partition_files(workdir, V)[DAY]]
    )


def test_gcs_publish_copies_and_deletes_overlap(gcs_bucket, monkeypatch) -> None:
    """A full day at scale is thousands of files: on gs:// their copies into the partition, and
    the deletes of the replaced files, go several at a time instead of one round trip after
    another, their sizes come from one listing (no request per file), and the day still ends
    with exactly the new files committed."""
    import threading
    import time

    workdir = storage.join(gcs_bucket, "work")
    stage_and_publish(workdir, "old", 12)
    lock = threading.Lock()
    most = {"rename": 0, "delete": 0}
    in_flight = dict.fromkeys(most, 0)

    def overlapping(kind: str, real):  # noqa: ANN001, ANN202 - a test wrapper
        def call(*args):  # noqa: ANN002, ANN202
            with lock:
                in_flight[kind] += 1
                most[kind] = max(most[kind], in_flight[kind])
            time.sleep(0.02)  # a round trip to a real bucket takes tens of ms
            try:
                return real(*args)
            finally:
                with lock:
                    in_flight[kind] -= 1

        return call

    def no_size_request(uri: str) -> int:
        raise AssertionError(f"a metadata request for {uri}, which the listing already sized")

    monkeypatch.setattr(partitions, "_size", no_size_request)
    monkeypatch.setattr(storage, "rename", overlapping("rename", storage.rename))
    monkeypatch.setattr(storage, "_delete_one", overlapping("delete", storage._delete_one))
    stage_and_publish(workdir, "new", 12)

    assert most["rename"] > 1 and most["delete"] > 1, most
    assert _package_ids(workdir) == NEW
    part = paths.embeddings_dir(workdir, V, DAY)
    committed = embeddings.partition_files(workdir, V)[DAY]
    assert len(committed) == 12
    assert sorted(storage.basename(u) for u in storage.list_prefix(part)) == sorted(
        [partitions.MANIFEST, *(storage.basename(u) for u in committed)]
    )
    # The manifest's byte counts are the committed objects' sizes.
    manifest = json.loads(storage.read_text(storage.join(part, partitions.MANIFEST)))
    assert {f["name"]: f["bytes"] for f in manifest["files"]} == {
        storage.basename(u): size
        for u, size in storage.list_sizes(part).items()
        if storage.basename(u) != partitions.MANIFEST
    }
