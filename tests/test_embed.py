"""The embed stage end to end on the DirectRunner (``pipelines/embed.py``): incremental days,
idempotence, --full, dead letters and the bad-fraction gate, the checks before any work,
multi_processing mode, gs:// output on the loopback server.

Which photos a day skips is tests/test_embed_plan.py; the job's steps (catalog read, inference
and its failure path, a real export) are tests/test_embed_job.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from core import catalog as catalog_mod
from core import embeddings, paths, runs, snapshot, storage
from core.deadletter import read_dead_letters
from pipelines import embed, embed_job
from pipelines.embed import EmbedError
from tests import embed_fixtures as fx
from transforms import change_detection
from vsearch import cli

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> tuple[str, str]:
    return fx.fake_model(tmp_path_factory)


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


# ------------------------------------------------------------------ generated catalog


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> str:
    from synthetic.generate import generate_catalog

    out = str(tmp_path_factory.mktemp("catalog"))
    generate_catalog(out, listings=30, days=2, seed=11, image_size=32, workers=1, progress_every=0)
    return out


def test_incremental_day1_day2_idempotent_and_full(
    generated, fake_model_dir, tmp_path, monkeypatch
) -> None:
    # Model batches of 2-8 rows merged into tables of ~20 before the shuffles: several batches
    # per table and several tables per day, so that the rows and state rows of every batch
    # must survive the merge for the counts and the day-2 skips below to hold.
    monkeypatch.setattr(embed_job, "MERGED_ROWS", 20)
    # The photos to read cross their shuffle in lists of 3: a part-full last list per bucket.
    monkeypatch.setattr(change_detection, "READ_UNIT", 3)
    workdir = str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    day1, day2 = _snapshot_images(generated, fx.D1), _snapshot_images(generated, fx.D2)

    s1 = embed.run(fx.settings(generated, workdir, fx.D1), fx.BEAM_ARGS)
    assert (s1.read, s1.ok, s1.skipped, s1.dead_lettered) == (len(day1), len(day1), 0, 0)
    fx.check_contract(fx.read_partition(workdir, version, fx.D1), version, fx.D1)

    # Day 2: added listings and re-shot photos (new files, new URIs) get rows; the rest is skipped.
    new_or_changed = {k for k, uri in day2.items() if day1.get(k) != uri}
    removed = {lid for lid, _ in day1} - {lid for lid, _ in day2}
    assert new_or_changed and removed and len(new_or_changed) < len(day2)
    # No Beam flags: the default, the DirectRunner in memory.
    s2 = embed.run(fx.settings(generated, workdir, fx.D2))
    assert s2.read == len(day2) == s2.ok + s2.skipped + s2.dead_lettered
    assert (s2.ok, s2.skipped) == (len(new_or_changed), len(day2) - len(new_or_changed))
    p2 = fx.read_partition(workdir, version, fx.D2)
    fx.check_contract(p2, version, fx.D2)
    assert {(lid, idx) for lid, idx, _ in _keys(p2)} == new_or_changed
    assert runs.read_summary(workdir, "embed", fx.D2)["skipped"] == s2.skipped

    # The current view: one row per snapshot image, removed listings gone, new photos win.
    current = embeddings.read_current_table(generated, workdir, fx.D2, version)
    assert {
        (r["listing_id"], r["image_index"]): r["image_uri"] for r in current.to_pylist()
    } == day2
    assert not removed & set(current["listing_id"].to_pylist())

    # Idempotent re-run of day 2: same rows, same files, no duplicates.
    before = sorted(
        storage.basename(u) for u in embeddings.partition_files(workdir, version)[fx.D2]
    )
    s2b = embed.run(fx.settings(generated, workdir, fx.D2), fx.BEAM_ARGS)
    assert (s2b.ok, s2b.skipped) == (s2.ok, s2.skipped)
    again = fx.read_partition(workdir, version, fx.D2)
    assert _keys(again) == _keys(p2)
    assert (
        sorted(storage.basename(u) for u in embeddings.partition_files(workdir, version)[fx.D2])
        == before
    )
    assert not storage.list_prefix(storage.join(workdir, "staging"))

    # A downstream team reads it with pandas.
    df = again.to_pandas()
    assert df.groupby(["listing_id", "image_index"]).size().max() == 1

    # --full: everything re-embedded into day 2's partition; the current view is unchanged in keys.
    sf = embed.run(fx.settings(generated, workdir, fx.D2, full=True), fx.BEAM_ARGS)
    assert (sf.ok, sf.skipped, sf.read) == (len(day2), 0, len(day2))
    full_current = embeddings.read_current_table(generated, workdir, fx.D2, version)
    assert full_current.num_rows == len(day2)
    assert set(full_current["dt"].to_pylist()) == {fx.D2}


def test_bad_images_dead_lettered_and_bad_fraction_gate(fake_model_dir, tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    fx.write_catalog(catalog, fx.D1, {**fx.GOOD, **fx.BAD})

    s = embed.run(fx.settings(catalog, workdir, fx.D1, max_bad_fraction=0.5))
    assert (s.read, s.ok, s.dead_lettered, s.skipped) == (8, 6, 2, 0)
    letters = {d["listing_id"]: d["error"] for d in read_dead_letters(workdir, "embed", fx.D1)}
    assert set(letters) == {"LCORRUPT", "LBLACK"}
    assert "NaN" in letters["LBLACK"]
    assert "listing image" in letters["LCORRUPT"]
    summary = runs.read_summary(workdir, "embed", fx.D1)
    assert summary["extra"]["published"] is True
    assert summary["extra"]["batch_size"]["count"] >= 1 and "inference_ms" in summary["extra"]
    assert summary["extra"]["load_model_latency_milli_secs"]["count"] == 1  # one model load
    assert fx.read_partition(workdir, version, fx.D1).num_rows == 6
    # The state remembers only photos with a row: both bad ones will be read again tomorrow
    # (LBLACK was read, decoded and embedded, and lost only at the NaN check).
    assert sorted(fx.read_state(workdir, version, fx.D1)) == sorted(fx.GOOD)

    # 2/8 bad is above a 10% threshold: the run fails and the partition stays as it was.
    with pytest.raises(EmbedError, match=r"2 of 8 images dead-lettered .* left unchanged"):
        embed.run(
            fx.settings(catalog, workdir, fx.D1, max_bad_fraction=0.1, full=True), fx.BEAM_ARGS
        )
    assert fx.read_partition(workdir, version, fx.D1).num_rows == 6
    assert runs.read_summary(workdir, "embed", fx.D1)["extra"]["published"] is False
    assert not storage.list_prefix(storage.join(workdir, "staging"))


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(EmbedError, match="no published model at"):
        embed.run(fx.settings(str(tmp_path), str(tmp_path), fx.D1), fx.BEAM_ARGS)
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
    version = fx.install_model(fake_model_dir, workdir)
    fx.write_catalog(catalog, fx.D1, fx.GOOD)
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

    summary = embed_day(fx.D1)
    t = fx.read_partition(workdir, version, fx.D1)
    assert sorted(t["listing_id"].to_pylist()) == sorted(fx.GOOD)
    fx.check_contract(t, version, fx.D1)
    assert (summary["read"], summary["ok"]) == (6, 6)
    if large_model:
        return
    # Day 2 lists the same photos: each is skipped on its metadata, and its state row crosses the
    # worker processes into day 2's snapshot.
    shutil.copytree(paths.catalog_day(catalog, fx.D1), paths.catalog_day(catalog, fx.D2))
    summary = embed_day(fx.D2)
    assert (summary["read"], summary["ok"], summary["skipped"]) == (6, 0, 6)
    assert summary["extra"]["skip_check"] == f"state snapshot of {fx.D1}"
    assert summary["extra"]["images_read"] == 0
    assert fx.read_state(workdir, version, fx.D2) == fx.read_state(workdir, version, fx.D1)
    assert len(fx.read_state(workdir, version, fx.D1)) == 6


def test_gcs_workdir_on_loopback_server(fake_model_dir, gcs_bucket, tmp_path) -> None:
    catalog = storage.join(gcs_bucket, "catalog")
    workdir = storage.join(gcs_bucket, "work")
    version = fx.install_model(fake_model_dir, workdir)
    fx.write_catalog(catalog, fx.D1, dict(list(fx.GOOD.items())[:3]))
    s = embed.run(fx.settings(catalog, workdir, fx.D1), fx.BEAM_ARGS)
    assert (s.read, s.ok) == (3, 3)
    files = embeddings.partition_files(workdir, version)[fx.D1]
    assert all(u.startswith("gs://") and "/part-" in u for u in files)
    current = embeddings.read_current_table(catalog, workdir, fx.D1, version)
    fx.check_contract(current, version, fx.D1)
    assert current.num_rows == 3
    # Day 2 moves the same photos to new URIs: same bytes, same sha256, nothing re-embedded.
    fx.write_catalog(catalog, fx.D2, dict(list(fx.GOOD.items())[:3]))
    s2 = embed.run(fx.settings(catalog, workdir, fx.D2))  # default flags on gs://
    assert (s2.read, s2.ok, s2.skipped) == (3, 0, 3)
    assert embeddings.read_current_table(catalog, workdir, fx.D2, version).num_rows == 3


def test_empty_or_shrunk_snapshot_is_refused_unless_allowed(fake_model_dir, tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    fx.write_catalog(catalog, fx.D1, fx.GOOD)
    embed.run(fx.settings(catalog, workdir, fx.D1), fx.BEAM_ARGS)
    fx.write_catalog(
        catalog, fx.D2, dict(list(fx.GOOD.items())[:2])
    )  # 6 -> 2 listings: a broken export
    with pytest.raises(EmbedError, match=r"has 2 rows, 66.7% fewer than the 6 .* --allow-shrink"):
        embed.run(fx.settings(catalog, workdir, fx.D2), fx.BEAM_ARGS)
    assert fx.D2 not in embeddings.partition_files(workdir, version)
    s = embed.run(fx.settings(catalog, workdir, fx.D2, allow_shrink=True), fx.BEAM_ARGS)
    assert s.read == 2
    # An empty snapshot (zero rows) is refused with the same kind of error, before any work.
    fx.write_catalog(catalog, fx.D3, {})
    with pytest.raises(EmbedError, match=r"snapshot of 2026-01-03 .* is empty"):
        embed.run(fx.settings(catalog, workdir, fx.D3), fx.BEAM_ARGS)
    parsed, _, _ = cli.command_line("embed").parse(
        ["--catalog", catalog, "--date", "2026-01-03", "--workdir", workdir, "--allow-shrink"]
    )
    assert parsed.allow_shrink


def test_lone_surrogate_is_a_dead_letter_not_a_dead_job(fake_model_dir, tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    fx.install_model(fake_model_dir, workdir)
    fx.write_catalog(catalog, fx.D1, dict(list(fx.GOOD.items())[:2]))  # writes the images
    u1, u2 = (f"images/{lid}/0-{fx.D1.isoformat()}.png" for lid in ("L1", "L2"))
    cat = '"category": "home/decor"'
    # JSON escapes of lone surrogates: json.loads turns them into str no UTF-8 encoder accepts.
    lines = [
        f'{{"listing_id": "L1", "image_uris": ["{u1}"], {cat}}}',
        f'{{"listing_id": "bad\\ud800id", "image_uris": ["{u2}"], {cat}}}',
        f'{{"listing_id": "L2", "image_uris": ["{u2}"], {cat}, "color": "r\\udcffd"}}',
    ]
    day = paths.catalog_day(catalog, fx.D1)
    storage.delete([storage.join(day, "listings.parquet")])
    storage.write_text(storage.join(day, "listings.jsonl"), "\n".join(lines) + "\n")
    s = embed.run(fx.settings(catalog, workdir, fx.D1, max_bad_fraction=1.0), fx.BEAM_ARGS)
    assert (s.ok, s.dead_lettered) == (1, 2)
    letters = read_dead_letters(workdir, "embed", fx.D1)
    assert sorted(d["listing_id"] for d in letters) == ["L2", "bad\\ud800id"]
    assert all("lone surrogate" in d["error"] for d in letters)


def test_truncated_earlier_file_is_one_clear_error_before_any_work(fake_model_dir, tmp_path):
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    fx.write_catalog(catalog, fx.D2, fx.GOOD)
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
    part = storage.join(
        paths.embeddings_dir(workdir, version, fx.D1), "part-00000-of-00001.parquet"
    )
    embeddings.write_parquet(part, [embeddings.to_record_batch([row], 16)], 16)
    with open(part, "r+b") as f:  # a copy that stopped half-way
        f.truncate(os.path.getsize(part) // 2)
    with pytest.raises(EmbedError, match=r"earlier embedding file .*part-00000-of-00001.parquet"):
        embed.run(fx.settings(catalog, workdir, fx.D2), fx.BEAM_ARGS)
    assert not storage.list_prefix(storage.join(workdir, "deadletter"))  # nothing ran


def test_missing_saved_model_is_a_clear_error_before_the_job(tmp_path) -> None:
    workdir = str(tmp_path / "work")
    storage.write_text(
        storage.join(paths.model_dir(workdir, "v1"), "config.json"),
        json.dumps({"version": "v1", "embedding_dim": 8, "image_size": 32}),
    )
    with pytest.raises(EmbedError, match=f"no SavedModel at {paths.embedder_dir(workdir, 'v1')}"):
        embed.run(fx.settings(str(tmp_path), workdir, fx.D1, model_version="v1"), fx.BEAM_ARGS)
