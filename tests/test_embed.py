"""The embed job end to end on the DirectRunner: incremental days, idempotence, --full, dead
letters and the bad-fraction gate, multi_processing mode, gs:// output on the loopback server.

The model is the small fake of tests/fake_embedder.py (same serving signature as the export),
built once per session and copied into each test's workdir.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.fake_embedder import build_fake_model
from core import catalog as catalog_mod
from core import embeddings, partitions, paths, runs, snapshot, storage
from core.deadletter import read_dead_letters
from pipelines import embed
from pipelines.embed import EmbedError, EmbedSettings
from vsearch import cli

pytestmark = pytest.mark.timeout(300)

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
BEAM_ARGS = ["--direct_num_workers=1"]  # in-memory, one thread; runs without flags use threads


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp("fake-model"))
    version = build_fake_model(root, dim=16, image_size=32)
    return root, version


def _install_model(fake_model_dir: tuple[str, str], workdir: str) -> str:
    """Copy the fake's models/ folder into ``workdir`` (local or gs://); returns its version."""
    root, version = fake_model_dir
    src = os.path.join(root, "models")
    for dirpath, _, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), src).split(os.sep)
            with open(os.path.join(dirpath, f), "rb") as fh:
                storage.write_bytes(storage.join(paths.models_root(workdir), *rel), fh.read())
    return version


def _settings(catalog: str, workdir: str, date: dt.date, **kw) -> EmbedSettings:
    base = dict(min_batch_size=2, max_batch_size=8, intra_op_threads=1, num_shards=2)
    base.update(kw)
    return EmbedSettings(catalog=catalog, date=date, workdir=workdir, **base)


def _partition(workdir: str, version: str, date: dt.date) -> pa.Table:
    files = embeddings.partition_files(workdir, version).get(date, [])
    tables = [pq.read_table(storage.open_read(u)) for u in files]
    return pa.concat_tables(tables) if tables else embeddings.schema(16).empty_table()


def _keys(t: pa.Table) -> list[tuple]:
    return sorted(
        zip(
            t["listing_id"].to_pylist(),
            t["image_index"].to_pylist(),
            t["image_sha256"].to_pylist(),
            strict=True,
        )
    )


def _snapshot_images(catalog: str, date: dt.date) -> dict[tuple[str, int], str]:
    """Each listing photo as embedding rows name it: relative to the catalog, never this
    machine's path."""
    snap = snapshot.read_snapshot(catalog, date)
    return {
        (r.listing_id, r.image_index): catalog_mod.catalog_name(r.uri, catalog)
        for x in snap.listings
        for r in catalog_mod.listing_images(x)
    }


def _check_contract(t: pa.Table, version: str, date: dt.date) -> None:
    if "dt" in t.schema.names:  # a reader's table: the hive key comes from the partition path
        assert set(t["dt"].to_pylist()) == {date}
        t = t.drop_columns(["dt"])
    assert t.schema.equals(embeddings.schema(16))
    vectors = np.stack(t["embedding"].to_numpy(zero_copy_only=False))
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert set(t["model_version"].to_pylist()) == {version}


# ------------------------------------------------------------------ generated catalog


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> str:
    from synthetic.generate import generate_catalog

    out = str(tmp_path_factory.mktemp("catalog"))
    generate_catalog(out, listings=30, days=2, seed=11, image_size=32, workers=1, progress_every=0)
    return out


def test_incremental_day1_day2_idempotent_and_full(generated, fake_model_dir, tmp_path) -> None:
    workdir = str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    day1, day2 = _snapshot_images(generated, D1), _snapshot_images(generated, D2)

    s1 = embed.run(_settings(generated, workdir, D1), BEAM_ARGS)
    assert (s1.read, s1.ok, s1.skipped, s1.dead_lettered) == (len(day1), len(day1), 0, 0)
    _check_contract(_partition(workdir, version, D1), version, D1)

    # Day 2: added listings and re-shot photos (new files, new URIs) get rows; the rest is skipped.
    new_or_changed = {k for k, uri in day2.items() if day1.get(k) != uri}
    removed = {lid for lid, _ in day1} - {lid for lid, _ in day2}
    assert new_or_changed and removed and len(new_or_changed) < len(day2)
    # No Beam flags: the default, the DirectRunner in memory.
    s2 = embed.run(_settings(generated, workdir, D2))
    assert s2.read == len(day2) == s2.ok + s2.skipped + s2.dead_lettered
    assert (s2.ok, s2.skipped) == (len(new_or_changed), len(day2) - len(new_or_changed))
    p2 = _partition(workdir, version, D2)
    _check_contract(p2, version, D2)
    assert {(lid, idx) for lid, idx, _ in _keys(p2)} == new_or_changed
    assert runs.read_summary(workdir, "embed", D2)["skipped"] == s2.skipped

    # The current view: one row per snapshot image, removed listings gone, new photos win.
    current = embeddings.read_current_table(generated, workdir, D2, version)
    assert {
        (r["listing_id"], r["image_index"]): r["image_uri"] for r in current.to_pylist()
    } == day2
    assert not removed & set(current["listing_id"].to_pylist())

    # Idempotent re-run of day 2: same rows, same files, no duplicates.
    before = sorted(storage.basename(u) for u in embeddings.partition_files(workdir, version)[D2])
    s2b = embed.run(_settings(generated, workdir, D2), BEAM_ARGS)
    assert (s2b.ok, s2b.skipped) == (s2.ok, s2.skipped)
    again = _partition(workdir, version, D2)
    assert _keys(again) == _keys(p2)
    assert (
        sorted(storage.basename(u) for u in embeddings.partition_files(workdir, version)[D2])
        == before
    )
    assert not storage.list_prefix(storage.join(workdir, "staging"))

    # A downstream team reads it with pandas.
    df = again.to_pandas()
    assert df.groupby(["listing_id", "image_index"]).size().max() == 1

    # --full: everything re-embedded into day 2's partition; the current view is unchanged in keys.
    sf = embed.run(_settings(generated, workdir, D2, full=True), BEAM_ARGS)
    assert (sf.ok, sf.skipped, sf.read) == (len(day2), 0, len(day2))
    full_current = embeddings.read_current_table(generated, workdir, D2, version)
    assert full_current.num_rows == len(day2)
    assert set(full_current["dt"].to_pylist()) == {D2}


# ------------------------------------------------------------------ hand-made catalog with bad inputs


def _png(color: tuple[int, int, int], size: int = 24, stripe: int = 0) -> bytes:
    a = np.zeros((size, size, 3), dtype=np.uint8)
    a[:] = color
    if stripe:
        a[:, ::stripe] = 255 - np.array(color, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _tiny_catalog(root: str, date: dt.date, images: dict[str, list[bytes]]) -> None:
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


GOOD = {f"L{i}": [_png((20 * i, 100, 200 - 20 * i), stripe=2 + i % 3)] for i in range(1, 7)}
BAD = {
    "LCORRUPT": [b"\x89PNG\r\n\x1a\n this is not really a png"],
    "LBLACK": [_png((0, 0, 0))],  # the fake model returns a NaN embedding for an all-black image
}


def test_bad_images_dead_lettered_and_bad_fraction_gate(fake_model_dir, tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    _tiny_catalog(catalog, D1, {**GOOD, **BAD})

    s = embed.run(_settings(catalog, workdir, D1, max_bad_fraction=0.5))
    assert (s.read, s.ok, s.dead_lettered, s.skipped) == (8, 6, 2, 0)
    letters = {d["listing_id"]: d["error"] for d in read_dead_letters(workdir, "embed", D1)}
    assert set(letters) == {"LCORRUPT", "LBLACK"}
    assert "NaN" in letters["LBLACK"]
    assert "listing image" in letters["LCORRUPT"]
    summary = runs.read_summary(workdir, "embed", D1)
    assert summary["extra"]["published"] is True
    assert summary["extra"]["batch_size"]["count"] >= 1 and "inference_ms" in summary["extra"]
    assert _partition(workdir, version, D1).num_rows == 6
    # The state remembers only photos with a row: both bad ones will be read again tomorrow
    # (LBLACK was read, decoded and embedded, and lost only at the NaN check).
    assert sorted(_state(workdir, version, D1)) == sorted(GOOD)

    # 2/8 bad is above a 10% threshold: the run fails and the partition stays as it was.
    with pytest.raises(EmbedError, match=r"2 of 8 images dead-lettered .* left unchanged"):
        embed.run(_settings(catalog, workdir, D1, max_bad_fraction=0.1, full=True), BEAM_ARGS)
    assert _partition(workdir, version, D1).num_rows == 6
    assert runs.read_summary(workdir, "embed", D1)["extra"]["published"] is False
    assert not storage.list_prefix(storage.join(workdir, "staging"))


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(EmbedError, match="no published model at"):
        embed.run(_settings(str(tmp_path), str(tmp_path), D1), BEAM_ARGS)
    assert (
        cli.main(
            [
                "embed",
                "--catalog",
                str(tmp_path),
                "--date",
                "2026-01-01",
                "--workdir",
                str(tmp_path),
            ]
        )
        == 1
    )


@pytest.mark.parametrize(
    "large_model", [False, True], ids=["model-per-process", "one-shared-model"]
)
def test_multi_processing_mode(fake_model_dir, tmp_path, large_model: bool) -> None:
    """Two SDK worker processes; with --large-model they share one model copy (a proxy)."""
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    _tiny_catalog(catalog, D1, GOOD)
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

    def embed_day(day: dt.date) -> dict:
        rc = cli.main(
            [
                "embed",
                "--catalog",
                catalog,
                "--date",
                day.isoformat(),
                "--workdir",
                workdir,
                "--model",
                version,
                "--intra-op-threads",
                "1",
                "--num-shards",
                "3",
                *args,
                *(["--large-model"] if large_model else []),
            ]
        )
        assert rc == 0
        return json.loads(storage.read_text(paths.run_summary(workdir, "embed", day)))

    summary = embed_day(D1)
    t = _partition(workdir, version, D1)
    assert sorted(t["listing_id"].to_pylist()) == sorted(GOOD)
    _check_contract(t, version, D1)
    assert (summary["read"], summary["ok"]) == (6, 6)
    if large_model:
        return
    # Day 2 lists the same photos: each is skipped on its metadata, and its state row crosses the
    # worker processes into day 2's snapshot.
    shutil.copytree(paths.catalog_day(catalog, D1), paths.catalog_day(catalog, D2))
    summary = embed_day(D2)
    assert (summary["read"], summary["ok"], summary["skipped"]) == (6, 0, 6)
    assert summary["extra"]["skip_check"] == f"state snapshot of {D1}"
    assert summary["extra"]["images_read"] == 0
    assert _state(workdir, version, D2) == _state(workdir, version, D1)
    assert len(_state(workdir, version, D1)) == 6


def test_gcs_workdir_on_loopback_server(fake_model_dir, gcs_bucket, tmp_path) -> None:
    catalog = storage.join(gcs_bucket, "catalog")
    workdir = storage.join(gcs_bucket, "work")
    version = _install_model(fake_model_dir, workdir)
    _tiny_catalog(catalog, D1, dict(list(GOOD.items())[:3]))
    s = embed.run(_settings(catalog, workdir, D1), BEAM_ARGS)
    assert (s.read, s.ok) == (3, 3)
    files = embeddings.partition_files(workdir, version)[D1]
    assert all(u.startswith("gs://") and "/part-" in u for u in files)
    current = embeddings.read_current_table(catalog, workdir, D1, version)
    _check_contract(current, version, D1)
    assert current.num_rows == 3
    # Day 2 moves the same photos to new URIs: same bytes, same sha256, nothing re-embedded.
    _tiny_catalog(catalog, D2, dict(list(GOOD.items())[:3]))
    s2 = embed.run(_settings(catalog, workdir, D2))  # default flags on gs://
    assert (s2.read, s2.ok, s2.skipped) == (3, 0, 3)
    assert embeddings.read_current_table(catalog, workdir, D2, version).num_rows == 3


# ------------------------------------------------------------------ the real export


def _build_real_export(workdir: str, size: int = 32, dim: int = 16) -> str:
    """An untrained but real `models/` export: TFT graph + Keras backbone + heads, raw bytes in."""
    import apache_beam as beam
    import tensorflow_transform as tft

    from core.images import decode_image
    from models import features as F
    from models.config import TrainConfig
    from models.export import export_embedder
    from models.model import build_model
    from pipelines.preprocess import PreprocessSettings, transform_and_write

    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        rows.append(
            {
                F.IMAGE_KEY: decode_image(_png(color, size=size, stripe=2 + i % 3), size),
                F.LISTING_ID_KEY: f"L{i // 2}".encode(),
                F.KIND_KEY: b"listing",
                "category": [b"home/decor", b"art/prints"][i % 2],
                "color": b"red",
                "shape": b"tall",
                "material": b"wood",
            }
        )
    version = "20260101-realtest"
    settings = PreprocessSettings(
        catalog="unused", date="2026-01-01", workdir=workdir, image_size=size, min_class_count=1
    )
    with beam.Pipeline() as p:
        transform_and_write(
            p | "Train" >> beam.Create(rows[:8]), p | "Eval" >> beam.Create(rows[8:]), settings
        )
    tft_output = tft.TFTransformOutput(paths.transformed_dir(workdir, "2026-01-01"))
    classes = {k: tft_output.vocabulary_size_by_name(F.vocab_name(k)) + 1 for k in F.LABEL_KEYS} | {
        "instance": 6
    }
    config = TrainConfig(workdir=workdir, date="2026-01-01", image_size=size, embedding_dim=dim)
    model = build_model(config, classes)
    _ = model.embedder(np.zeros((1, size, size, 3), "float32"))
    export_embedder(tft_output, model.embedder, model.heads, paths.embedder_dir(workdir, version))
    cfg = {"version": version, "embedding_dim": dim, "image_size": size}
    storage.write_text(
        storage.join(paths.model_dir(workdir, version), "config.json"), json.dumps(cfg)
    )
    return version


def test_real_export_through_the_job(tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _build_real_export(workdir)
    _tiny_catalog(catalog, D1, dict(list(GOOD.items())[:4]))
    s = embed.run(_settings(catalog, workdir, D1, model_version=version), BEAM_ARGS)
    assert (s.read, s.ok, s.dead_lettered) == (4, 4, 0)
    t = _partition(workdir, version, D1)
    _check_contract(t, version, D1)
    assert set(t["category_pred"].to_pylist()) <= {"home/decor", "art/prints", ""}
    assert all(0.0 < x <= 1.0 for x in t["category_score"].to_pylist())


# ------------------------------------------------------------------ change detection from metadata


def _catalog_at_fixed_uris(
    root: str,
    date: dt.date,
    images: dict[str, bytes],
    rewrite: set[str],
    mtime: int,
    checksums: bool = False,
) -> dict[str, str]:
    """listings.parquet whose listing L has the one photo images/L.png at the same URI every day;
    the photos in ``rewrite`` are (re)written (mtime set to ``mtime`` locally). Returns L -> URI."""
    from synthetic.tables import LISTINGS_SCHEMA

    uris = {}
    for lid, data in images.items():
        rel = f"images/{lid}.png"
        full = storage.join(root, rel)
        if lid in rewrite:
            storage.write_bytes(full, data)
            if not storage.is_gcs(full):
                os.utime(full, ns=(mtime, mtime))
        uris[lid] = full if storage.is_gcs(full) else os.path.normpath(full)
        images[lid] = data
    ids = sorted(images)
    n = len(ids)
    table = pa.table(
        {
            "listing_id": ids,
            "image_uris": [[f"images/{i}.png"] for i in ids],
            "title": ["t"] * n,
            "category": ["home/decor"] * n,
            "color": [None] * n,
            "shape": [None] * n,
            "material": [None] * n,
            "updated_at": [None] * n,
        },
        schema=LISTINGS_SCHEMA,
    )
    if checksums:  # the optional catalog column: a content checksum per image
        sums = [[hashlib.md5(images[i]).hexdigest()] for i in ids]
        table = table.append_column("image_checksums", pa.array(sums, pa.list_(pa.string())))
    with storage.atomic_writer(
        storage.join(paths.catalog_day(root, date), "listings.parquet")
    ) as f:
        pq.write_table(table, f)
    return uris


def _day1_day2_reads(
    catalog: str,
    workdir: str,
    version: str,
    monkeypatch,
    checksums: bool = False,
    between: Callable[[], None] = lambda: None,
) -> dict:
    """Day 1 -> day 2 with added (L6), changed at the same URI (L2), removed (L3), rewritten with
    identical bytes (L4) and untouched (L1, L5) photos; returns what each day read. ``between``
    runs after day 1."""
    from transforms import read_images

    reads: list[str] = []
    real = read_images.read_limited

    def counting(uri: str, max_bytes: int) -> bytes:
        reads.append(uri)
        return real(uri, max_bytes)

    monkeypatch.setattr(read_images, "read_limited", counting)
    photos = {f"L{i}": _png((30 * i, 90, 200 - 30 * i), stripe=2 + i % 3) for i in range(1, 6)}
    day1 = _catalog_at_fixed_uris(
        catalog, D1, dict(photos), set(photos), mtime=10**18, checksums=checksums
    )
    s1 = embed.run(_settings(catalog, workdir, D1), BEAM_ARGS)
    out: dict = {"s1": s1, "reads1": sorted(reads), "day1": day1}
    between()
    reads.clear()
    day2_photos = {k: v for k, v in photos.items() if k != "L3"}
    day2_photos["L2"] = _png((5, 250, 5), stripe=3)  # new bytes at the same URI
    day2_photos["L6"] = _png((250, 250, 0), stripe=4)  # a new listing
    uris = _catalog_at_fixed_uris(
        catalog,
        D2,
        day2_photos,
        {"L2", "L4", "L6"},
        mtime=10**18 + 86_400 * 10**9,
        checksums=checksums,
    )
    out.update(s2=embed.run(_settings(catalog, workdir, D2), BEAM_ARGS), reads2=sorted(reads))
    out["extra2"] = runs.read_summary(workdir, "embed", D2)["extra"]  # the day's health record
    out.update(uris=uris, current=embeddings.read_current_table(catalog, workdir, D2, version))
    out["catalog"] = catalog
    out["p2"] = _partition(workdir, version, D2)
    out["state2"] = _state(workdir, version, D2)
    out["photos2"] = day2_photos
    out["reads"] = reads  # keeps counting: a test may run more days
    return out


def _state(workdir: str, version: str, date: dt.date) -> dict[str, str]:
    """The committed embed state of ``date``: listing id -> sha256."""
    folder = paths.embed_state_dir(workdir, version, date)
    files = partitions.committed_files(folder, storage.list_prefix(folder))
    rows = pa.concat_tables([pq.read_table(storage.open_read(u)) for u in files]).to_pylist()
    assert len({r["listing_id"] for r in rows}) == len(rows)  # one row per photo
    return {r["listing_id"]: r["image_sha256"] for r in rows}


def _expect_day2(r: dict, read_on_day2: set[str]) -> None:
    uris = r["uris"]
    assert r["reads1"] == sorted(r["day1"].values())  # day 1: every photo, once
    assert r["reads2"] == sorted(uris[k] for k in read_on_day2)
    s2 = r["s2"]
    # Embedded: the added and the changed photo; the identical rewrite was read but not embedded.
    assert sorted(r["p2"]["listing_id"].to_pylist()) == ["L2", "L6"]
    assert (s2.read, s2.ok, s2.skipped) == (5, 2, 3)
    assert r["extra2"]["skipped_by_metadata"] == 5 - len(read_on_day2)
    assert r["extra2"]["images_read"] == len(read_on_day2)
    # A clean Parquet snapshot is checked on whole columns: no row took the per-row parser.
    assert r["extra2"]["listing_rows_parsed_alone"] == 0
    cur = r["current"]
    assert sorted(cur["listing_id"].to_pylist()) == ["L1", "L2", "L4", "L5", "L6"]  # L3 removed
    new_l2 = [row for row in cur.to_pylist() if row["listing_id"] == "L2"][0]
    assert new_l2["dt"] == D2 and new_l2["image_uri"] == "images/L2.png"  # as the catalog names it
    assert all(not u.startswith(("/", r["catalog"])) for u in cur["image_uri"].to_pylist())
    # Day 2's state is a snapshot of every current photo with an embedding row (skipped, read
    # and recognised, embedded), each with the sha256 of its bytes; L3 left with its listing.
    photos = r["photos2"]
    assert r["state2"] == {k: hashlib.sha256(photos[k]).hexdigest() for k in photos}


@pytest.mark.parametrize("listings_per_bucket", [100_000, 2], ids=["one-bucket", "3-buckets"])
def test_unchanged_photos_are_not_read_local(
    fake_model_dir, tmp_path, monkeypatch, listings_per_bucket: int
) -> None:
    from transforms import change_detection

    # 2 listings a bucket splits the 5-listing days into 3 hash buckets, as a big catalog would.
    monkeypatch.setattr(change_detection, "LISTINGS_PER_BUCKET", listings_per_bucket)
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch)
    assert r["extra2"]["change_buckets"] == -(-5 // listings_per_bucket)
    # Locally the rewrite of L4 changes its mtime: read, recognised by sha256, not re-embedded.
    _expect_day2(r, {"L2", "L4", "L6"})
    # One stat per photo of the day, no folder listed.
    assert (r["extra2"]["files_stat"], r["extra2"]["objects_listed"]) == (5, 0)
    # The metadata state lives outside the embeddings folder: pandas opens the folder as before.
    import pandas as pd

    df = pd.read_parquet(paths.embeddings_root(workdir, version))
    assert len(df) == 5 + 2 and "meta_key" not in df.columns


def test_prefixes_to_list_match_the_per_uri_rule() -> None:
    """PhotosToRead groups gs:// photos by listing prefix computed on whole columns; each must
    be exactly ``objectmeta.listing_unit``'s, or a photo's prefix is never listed (or listed in a
    group without the photo) and the photo is read every day."""
    from core import objectmeta
    from transforms import change_detection

    uris = [
        "gs://b/flat/ab1.jpg",
        "gs://b/flat/ab2.jpg",
        "gs://b/flat/a.jpg",
        "gs://b/x/é€abc.jpg",
        "gs://b/top.jpg",
        "gs://b/d/e/f/g",
        "gs://b/images/L1/0-a.jpg",
    ]
    got = change_detection._units(pa.array(uris)).to_pylist()
    assert got == [objectmeta.listing_unit(u) for u in uris]
    assert got[:3] == ["gs://b/flat/ab", "gs://b/flat/ab", "gs://b/flat/a."]


def test_a_state_file_goes_to_its_bucket_without_being_split_again(tmp_path, monkeypatch) -> None:
    """A run's state is written one file per hash bucket (the rows of the photos it skipped and
    of those it read); the next run with as many buckets sends each file to its bucket as it is
    (no hash of the day's rows), and a run with another bucket count, or state written before
    the files were per bucket, splits them as before."""
    from core import embedstate
    from transforms import change_detection as cd

    n = 60
    rows = pa.table(
        {
            "listing_id": [f"L{i}" for i in range(n)],
            "image_index": pa.array([i % 3 for i in range(n)], pa.int32()),
            "image_uri": [f"/photos/L{i}/0.jpg" for i in range(n)],
            "meta_key": [f"size={i};mtime_ns=1" for i in range(n)],
            "image_sha256": [f"{i:064x}" for i in range(n)],
        }
    )

    def as_dict(pairs):
        return {b: sorted(t.table.to_pylist(), key=str) for b, t in pairs}

    expected = as_dict(cd.split_by_bucket(rows, "listing_id", 3))
    assert len(expected) == 3
    # Rows that come one at a time (the read photos' state) get the same bucket as in a table.
    assert all(cd.bucket_of(r["listing_id"], 3) == b for b, rs in expected.items() for r in rs)
    files = {}
    for b, part in cd.split_by_bucket(rows, "listing_id", 3):
        kind = "kept" if b % 2 else "read"
        files[b] = str(tmp_path / embedstate.bucket_file_name(kind, b, 3))
        embedstate.write_table(files[b], part.table)
    whole = str(tmp_path / "part-00000-of-00001.parquet")
    embedstate.write_table(whole, rows)

    resplit = {b: as_dict(cd._state_tables(uri, 5)) for b, uri in files.items()}
    whole_split = as_dict(cd._state_tables(whole, 3))

    def no_hash(*_: object) -> None:
        raise AssertionError("a state file of today's bucket count was hashed again")

    monkeypatch.setattr(cd, "column_hashes", no_hash)
    for b, uri in files.items():
        assert as_dict(cd._state_tables(uri, 3)) == {b: expected[b]}
    # Another bucket count: the rows are split again, each row into its bucket of 5.
    monkeypatch.undo()
    for b, uri in files.items():
        table = pq.read_table(uri).cast(cd.STATE)
        assert resplit[b] == as_dict(cd.split_by_bucket(table, "listing_id", 5))
    assert whole_split == expected


def test_only_gcs_photos_without_a_checksum_go_to_the_listing_groups(tmp_path) -> None:
    """A photo with a catalog checksum keeps the catalog's key, and a local photo gets its
    file's size and mtime from one stat, both straight to their listing bucket; only gs:// photos
    without a checksum go to the listing groups. Every photo comes out exactly once."""
    import apache_beam as beam

    from core.catalog_columns import LISTING_TABLE
    from transforms import change_detection

    there = tmp_path / "B0.jpg"
    there.write_bytes(b"jpeg")
    os.utime(there, ns=(10**18, 10**18))
    gone, folder = str(tmp_path / "gone.jpg"), str(tmp_path)  # missing; not a regular file
    listings = pa.table(
        {
            "listing_id": ["A", "B", "C", "D"],
            "image_uris": [
                ["gs://b/A/0.jpg", "gs://b/A/1.jpg"],
                [str(there), gone, folder],
                ["/c/C/0.jpg"],
                [],
            ],
            "image_checksums": [["ca0", None], None, ["cc0"], None],
        },
        schema=LISTING_TABLE,
    )
    straight, grouped = [], []
    for out in change_detection._photo_tables(listings, buckets=3, list_objects=True):
        if isinstance(out, beam.pvalue.TaggedOutput):
            grouped += out.value[1].table.to_pylist()
        else:
            straight += out[1].table.to_pylist()
    photo = lambda r: (r["listing_id"], r["image_index"], r["meta_key"])  # noqa: E731
    assert sorted(map(photo, straight)) == [
        ("A", 0, "catalog=ca0"),
        ("B", 0, f"size=4;mtime_ns={10**18}"),
        ("B", 1, ""),  # not found: the photo is read, and dead-lettered as missing
        ("B", 2, ""),
        ("C", 0, "catalog=cc0"),
    ]
    assert sorted(map(photo, grouped)) == [("A", 1, "")]


def test_unchanged_photos_are_not_read_gcs(fake_model_dir, gcs_bucket, monkeypatch) -> None:
    catalog, workdir = storage.join(gcs_bucket, "cat"), storage.join(gcs_bucket, "work")
    version = _install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch)
    # On GCS the key is the object's MD5: the identical re-upload of L4 is not even read.
    _expect_day2(r, {"L2", "L6"})
    assert r["extra2"]["files_stat"] == 0 and r["extra2"]["objects_listed"] >= 5


def test_catalog_checksums_need_no_listing_and_no_read(fake_model_dir, tmp_path, monkeypatch):
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch, checksums=True)
    _expect_day2(r, {"L2", "L6"})  # the identical rewrite keeps its checksum: not read
    assert r["extra2"]["objects_listed"] == 0  # no folder was listed at all
    assert r["extra2"]["files_stat"] == 0  # and no file was looked at


# ------------------------------------------------------------------ guards


D3 = D2 + dt.timedelta(days=1)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_day_three_runs_on_the_state_snapshot_alone(fake_model_dir, tmp_path, monkeypatch):
    """Day 2 and day 3 each need only the day before's state snapshot: no earlier partition's
    keys are read, only the photo whose bytes changed is, and each day's snapshot names every
    current photo with the sha256 of its bytes."""
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch)
    assert (r["extra2"]["skip_check"], r["extra2"]["earlier_files"]) == (
        f"state snapshot of {D1}",
        0,
    )
    photos = dict(r["photos2"])
    photos["L5"] = _png((1, 120, 3), stripe=2)
    uris = _catalog_at_fixed_uris(catalog, D3, photos, {"L5"}, mtime=10**18 + 2 * 86_400 * 10**9)
    r["reads"].clear()
    s3 = embed.run(_settings(catalog, workdir, D3), BEAM_ARGS)
    extra = runs.read_summary(workdir, "embed", D3)["extra"]
    assert (extra["skip_check"], extra["earlier_files"]) == (f"state snapshot of {D2}", 0)
    assert r["reads"] == [uris["L5"]]
    assert (s3.read, s3.ok, s3.skipped) == (5, 1, 4)
    assert _partition(workdir, version, D3)["listing_id"].to_pylist() == ["L5"]
    assert _state(workdir, version, D3) == {k: _sha(v) for k, v in photos.items()}


def test_a_deleted_partition_sends_the_next_day_back_to_the_full_check(
    fake_model_dir, tmp_path, monkeypatch
):
    """A snapshot is trusted only on the partitions it was made on. With day 1's partition
    deleted (retention, a mistake), day 3 checks the snapshot against the partitions left and
    embeds again the photos whose rows went with day 1, which the snapshot alone would skip."""
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch)
    storage.delete_prefix(paths.embeddings_dir(workdir, version, D1))
    photos = dict(r["photos2"])
    uris = _catalog_at_fixed_uris(catalog, D3, photos, set(), mtime=0)
    r["reads"].clear()
    s3 = embed.run(_settings(catalog, workdir, D3), BEAM_ARGS)
    extra = runs.read_summary(workdir, "embed", D3)["extra"]
    assert extra["skip_check"] == (
        f"every earlier partition (partitions changed since the state of {D2}: {D1})"
    )
    assert extra["earlier_files"] == len(embeddings.partition_files(workdir, version)[D2])
    # L1, L4 and L5 had their rows in day 1's partition; L2 and L6 have theirs in day 2's.
    assert sorted(r["reads"]) == sorted(uris[k] for k in ("L1", "L4", "L5"))
    assert (s3.read, s3.ok, s3.skipped) == (5, 3, 2)
    assert sorted(_partition(workdir, version, D3)["listing_id"].to_pylist()) == ["L1", "L4", "L5"]
    current = embeddings.read_current_table(catalog, workdir, D3, version)
    assert sorted(current["listing_id"].to_pylist()) == ["L1", "L2", "L4", "L5", "L6"]
    assert _state(workdir, version, D3) == {k: _sha(v) for k, v in photos.items()}


def test_state_from_before_snapshots_is_checked_against_every_partition(
    fake_model_dir, tmp_path, monkeypatch
):
    """A state written before snapshots existed (no ``basis`` in its manifest) still saves the
    reads, checked against the partitions' keys, and the day after runs on a snapshot again."""
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)

    def forget_basis() -> None:
        folder = paths.embed_state_dir(workdir, version, D1)
        manifest = partitions.read_manifest(folder)
        assert manifest is not None and manifest.pop("basis") == {
            D1.isoformat(): manifest["attempt"]
        }
        storage.write_text(storage.join(folder, partitions.MANIFEST), json.dumps(manifest))

    r = _day1_day2_reads(catalog, workdir, version, monkeypatch, between=forget_basis)
    _expect_day2(r, {"L2", "L4", "L6"})
    assert r["extra2"]["skip_check"] == "every earlier partition (no state snapshot)"
    assert r["extra2"]["earlier_files"] == len(embeddings.partition_files(workdir, version)[D1])
    _catalog_at_fixed_uris(catalog, D3, dict(r["photos2"]), set(), mtime=0)
    r["reads"].clear()
    embed.run(_settings(catalog, workdir, D3), BEAM_ARGS)
    extra = runs.read_summary(workdir, "embed", D3)["extra"]
    assert extra["skip_check"] == f"state snapshot of {D2}" and r["reads"] == []


def test_empty_or_shrunk_snapshot_is_refused_unless_allowed(fake_model_dir, tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    _tiny_catalog(catalog, D1, GOOD)
    embed.run(_settings(catalog, workdir, D1), BEAM_ARGS)
    _tiny_catalog(catalog, D2, dict(list(GOOD.items())[:2]))  # 6 -> 2 listings: a broken export
    with pytest.raises(EmbedError, match=r"has 2 rows, 66.7% fewer than the 6 .* --allow-shrink"):
        embed.run(_settings(catalog, workdir, D2), BEAM_ARGS)
    assert D2 not in embeddings.partition_files(workdir, version)
    s = embed.run(_settings(catalog, workdir, D2, allow_shrink=True), BEAM_ARGS)
    assert s.read == 2
    # An empty snapshot (zero rows) is refused with the same kind of error, before any work.
    D3 = dt.date(2026, 1, 3)
    _tiny_catalog(catalog, D3, {})
    with pytest.raises(EmbedError, match=r"snapshot of 2026-01-03 .* is empty"):
        embed.run(_settings(catalog, workdir, D3), BEAM_ARGS)
    parsed, _, _ = cli.command_line("embed").parse(
        ["--catalog", catalog, "--date", "2026-01-03", "--workdir", workdir, "--allow-shrink"]
    )
    assert parsed.allow_shrink


def test_lone_surrogate_is_a_dead_letter_not_a_dead_job(fake_model_dir, tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    _install_model(fake_model_dir, workdir)
    _tiny_catalog(catalog, D1, dict(list(GOOD.items())[:2]))  # writes the images
    u1, u2 = (f"images/{lid}/0-{D1.isoformat()}.png" for lid in ("L1", "L2"))
    cat = '"category": "home/decor"'
    # JSON escapes of lone surrogates: json.loads turns them into str no UTF-8 encoder accepts.
    lines = [
        f'{{"listing_id": "L1", "image_uris": ["{u1}"], {cat}}}',
        f'{{"listing_id": "bad\\ud800id", "image_uris": ["{u2}"], {cat}}}',
        f'{{"listing_id": "L2", "image_uris": ["{u2}"], {cat}, "color": "r\\udcffd"}}',
    ]
    day = paths.catalog_day(catalog, D1)
    storage.delete([storage.join(day, "listings.parquet")])
    storage.write_text(storage.join(day, "listings.jsonl"), "\n".join(lines) + "\n")
    s = embed.run(_settings(catalog, workdir, D1, max_bad_fraction=1.0), BEAM_ARGS)
    assert (s.ok, s.dead_lettered) == (1, 2)
    letters = read_dead_letters(workdir, "embed", D1)
    assert sorted(d["listing_id"] for d in letters) == ["L2", "bad\\ud800id"]
    assert all("lone surrogate" in d["error"] for d in letters)


def test_truncated_earlier_file_is_one_clear_error_before_any_work(fake_model_dir, tmp_path):
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _install_model(fake_model_dir, workdir)
    _tiny_catalog(catalog, D2, GOOD)
    row = {
        "listing_id": "L1",
        "image_uri": "x",
        "image_index": 0,
        "image_sha256": "s",
        "model_version": version,
        "embedding": np.ones(16, np.float32) / 4,
        "category_pred": "a",
        "category_score": 1.0,
        "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    part = storage.join(paths.embeddings_dir(workdir, version, D1), "part-00000-of-00001.parquet")
    embeddings.write_parquet(part, [embeddings.to_record_batch([row], 16)], 16)
    with open(part, "r+b") as f:  # a copy that stopped half-way
        f.truncate(os.path.getsize(part) // 2)
    with pytest.raises(EmbedError, match=r"earlier embedding file .*part-00000-of-00001.parquet"):
        embed.run(_settings(catalog, workdir, D2), BEAM_ARGS)
    assert not storage.list_prefix(storage.join(workdir, "deadletter"))  # nothing ran


@pytest.mark.parametrize("stage", ["check-catalog", "preprocess", "embed"])
def test_lone_surrogates_become_dead_letters_in_the_shared_catalog_reader(tmp_path, stage):
    """check-catalog, preprocess and embed all read the snapshot through ReadCatalog."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.read_catalog import ReadCatalog

    catalog = str(tmp_path)
    day = paths.catalog_day(catalog, D1)
    cat = '"category": "home/decor"'
    lines = [
        f'{{"listing_id": "ok", "image_uris": ["a.png"], {cat}}}',
        f'{{"listing_id": "x\\ud800", "image_uris": ["b.png"], {cat}}}',
        f'{{"listing_id": "lab", "image_uris": ["c.png"], {cat}, "material": "\\udfff"}}',
        '{"review_id": "r1", "listing_id": "ok", "image_uri": "\\ud801.png"}',
    ]
    storage.write_text(storage.join(day, "listings.jsonl"), "\n".join(lines[:3]) + "\n")
    storage.write_text(storage.join(day, "reviews.jsonl"), lines[3] + "\n")
    with TestPipeline() as p:
        out = p | ReadCatalog(catalog, D1, stage=stage)
        ids = out["listings"] | beam.Map(lambda x: x.listing_id)
        assert_that(ids, equal_to(["ok"]), label="good")
        dead = out["dead_letter"] | beam.Map(lambda d: (d.listing_id, "lone surrogate" in d.error))
        assert_that(dead, equal_to([("x\\ud800", True), ("lab", True), ("ok", True)]), label="dead")


def test_embed_reads_no_review_rows(tmp_path) -> None:
    """Embed's catalog read skips the reviews table: bad review rows are check-catalog's and
    preprocess's dead letters, not embed's, and no review row is parsed or shuffled."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.read_catalog import ReadCatalog

    catalog = str(tmp_path)
    day = paths.catalog_day(catalog, D1)
    listing = '{"listing_id": "ok", "image_uris": ["a.png"], "category": "home/decor"}'
    reviews = ['{"review_id": "r1", "listing_id": "gone", "image_uri": "r.png"}', "{not json"]
    storage.write_text(storage.join(day, "listings.jsonl"), listing + "\n")
    storage.write_text(storage.join(day, "reviews.jsonl"), "\n".join(reviews) + "\n")
    with TestPipeline() as p:
        both = p | "Both" >> ReadCatalog(catalog, D1)
        dead = both["dead_letter"] | "BothDead" >> beam.Map(lambda d: d.error.split(":")[0])
        assert_that(dead, equal_to(["reviews", "reviews"]), label="both_dead")
        listings_only = p | "ListingsOnly" >> ReadCatalog(
            catalog, D1, stage=embed.STAGE, reviews=False
        )
        ids = listings_only["listings"] | beam.Map(lambda x: x.listing_id)
        assert_that(ids, equal_to(["ok"]), label="listings")
        assert_that(listings_only["reviews"], equal_to([]), label="no_reviews")
        assert_that(listings_only["dead_letter"], equal_to([]), label="no_dead")


def test_missing_saved_model_is_a_clear_error_before_the_job(tmp_path) -> None:
    workdir = str(tmp_path / "work")
    storage.write_text(
        storage.join(paths.model_dir(workdir, "v1"), "config.json"),
        json.dumps({"version": "v1", "embedding_dim": 8, "image_size": 32}),
    )
    with pytest.raises(EmbedError, match=f"no SavedModel at {paths.embedder_dir(workdir, 'v1')}"):
        embed.run(_settings(str(tmp_path), workdir, D1, model_version="v1"), BEAM_ARGS)


def test_raw_bytes_pixels_and_the_job_agree_on_a_non_square_jpeg(tmp_path) -> None:
    """One image path: a non-square JPEG through the raw-bytes signature (decoded and letterboxed
    in the graph), the pixel signature (Pillow's safe decode) and the embed job: cosine >= 0.999."""
    from models.artifact import Embedder

    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _build_real_export(workdir)
    rng = np.random.default_rng(4)
    photos = {}
    for i, (w, h) in enumerate(((160, 90), (70, 130), (300, 200))):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + 2 * yy) % 256], -1).astype(np.uint8)
        rgb[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 256, 3)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=92)
        photos[f"J{i}"] = buf.getvalue()
    _tiny_catalog(catalog, D1, {k: [v] for k, v in photos.items()})
    s = embed.run(_settings(catalog, workdir, D1, model_version=version), BEAM_ARGS)
    assert (s.ok, s.dead_lettered) == (3, 0)
    t = _partition(workdir, version, D1).sort_by("listing_id")
    by_job = np.array(t["embedding"].to_pylist(), np.float32)
    ordered = [photos[k] for k in t["listing_id"].to_pylist()]
    embedder = Embedder.open(workdir, version)
    by_bytes = embedder.embed_bytes(ordered)["embedding"]
    by_pixels = embedder.embed_photos(ordered)
    np.testing.assert_allclose(np.sum(by_job * by_pixels, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(by_job * by_bytes, axis=1)
    assert np.all(cosine >= 0.999), cosine
