"""Shared pieces of the embed tests: the fake model, hand-made catalogs, reading what a run wrote.

The model is the small fake of benchmarks/fake_embedder.py (same serving signature as the export),
built once per test session (``fake_model``) and copied into each test's workdir.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.fake_embedder import build_fake_model
from core import embeddings, partitions, paths, storage
from pipelines.embed import EmbedSettings

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
D3 = D2 + dt.timedelta(days=1)
BEAM_ARGS = ["--direct_num_workers=1"]  # in-memory, one thread; runs without flags use threads


def install_model(fake_model_dir: tuple[str, str], workdir: str) -> str:
    """Copy the fake's models/ folder into ``workdir`` (local or gs://); returns its version."""
    root, version = fake_model_dir
    src = os.path.join(root, "models")
    for dirpath, _, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), src).split(os.sep)
            with open(os.path.join(dirpath, f), "rb") as fh:
                storage.write_bytes(storage.join(paths.models_root(workdir), *rel), fh.read())
    return version


def settings(catalog: str, workdir: str, date: dt.date, **kw) -> EmbedSettings:
    base = dict(min_batch_size=2, max_batch_size=8, intra_op_threads=1, num_shards=2)
    base.update(kw)
    return EmbedSettings(catalog=catalog, date=date, workdir=workdir, **base)


def read_partition(workdir: str, version: str, date: dt.date) -> pa.Table:
    files = embeddings.partition_files(workdir, version).get(date, [])
    tables = [pq.read_table(storage.open_read(u)) for u in files]
    return pa.concat_tables(tables) if tables else embeddings.schema(16).empty_table()


def check_contract(t: pa.Table, version: str, date: dt.date) -> None:
    if "dt" in t.schema.names:  # a reader's table: the hive key comes from the partition path
        assert set(t["dt"].to_pylist()) == {date}
        t = t.drop_columns(["dt"])
    assert t.schema.equals(embeddings.schema(16))
    vectors = np.stack(t["embedding"].to_numpy(zero_copy_only=False))
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert set(t["model_version"].to_pylist()) == {version}


def png(color: tuple[int, int, int], size: int = 24, stripe: int = 0) -> bytes:
    a = np.zeros((size, size, 3), dtype=np.uint8)
    a[:] = color
    if stripe:
        a[:, ::stripe] = 255 - np.array(color, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def write_catalog(root: str, date: dt.date, images: dict[str, list[bytes]]) -> None:
    """listings.parquet + image files; listing L has images images/L/i.png."""
    from synthetic.tables import LISTINGS_SCHEMA

    uris = {}
    for lid, blobs in images.items():
        uris[lid] = []
        for i, data in enumerate(blobs):
            rel = f"images/{lid}/{i}-{date.isoformat()}.png"
            storage.write_bytes(storage.join(root, rel), data)
            uris[lid].append(rel)
    ids = sorted(images)
    table = pa.table(
        {
            "listing_id": ids,
            "image_uris": [uris[i] for i in ids],
            "title": ["t"] * len(ids),
            "category": ["home/decor"] * len(ids),
            "color": [None] * len(ids),
            "shape": [None] * len(ids),
            "material": [None] * len(ids),
            "updated_at": [None] * len(ids),
        },
        schema=LISTINGS_SCHEMA,
    )
    with storage.atomic_writer(
        storage.join(paths.catalog_day(root, date), "listings.parquet")
    ) as f:
        pq.write_table(table, f)


GOOD = {f"L{i}": [png((20 * i, 100, 200 - 20 * i), stripe=2 + i % 3)] for i in range(1, 7)}
BAD = {
    "LCORRUPT": [b"\x89PNG\r\n\x1a\n this is not really a png"],
    "LBLACK": [png((0, 0, 0))],  # the fake model returns a NaN embedding for an all-black image
}


def read_state(workdir: str, version: str, date: dt.date) -> dict[str, str]:
    """The committed embed state of ``date``: listing id -> sha256."""
    folder = paths.embed_state_dir(workdir, version, date)
    files = partitions.committed_files(folder, storage.list_prefix(folder))
    rows = pa.concat_tables([pq.read_table(storage.open_read(u)) for u in files]).to_pylist()
    assert len({r["listing_id"] for r in rows}) == len(rows)  # one row per photo
    return {r["listing_id"]: r["image_sha256"] for r in rows}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FAKE_MODEL: list[tuple[str, str]] = []  # (root, version), built once per test session


def fake_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The fake model's folder and version; each test module's session fixture calls this, so
    the model is built once however many modules use it."""
    if not _FAKE_MODEL:
        root = str(tmp_path_factory.mktemp("fake-model"))
        _FAKE_MODEL.append((root, build_fake_model(root, dim=16, image_size=32)))
    return _FAKE_MODEL[0]
