"""Which photos a day of the embed stage reads (``pipelines/embed_plan.py`` and the change
detection, ``transforms/change_detection.py``): unchanged photos are not read, locally, on gs://
and with catalog checksums; state snapshots, and the full check when partitions changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import embeddings, partitions, paths, runs, storage
from pipelines import embed
from tests import embed_fixtures as fx

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> tuple[str, str]:
    return fx.fake_model(tmp_path_factory)


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
    photos = {f"L{i}": fx.png((30 * i, 90, 200 - 30 * i), stripe=2 + i % 3) for i in range(1, 6)}
    day1 = _catalog_at_fixed_uris(
        catalog, fx.D1, dict(photos), set(photos), mtime=10**18, checksums=checksums
    )
    s1 = embed.run(fx.settings(catalog, workdir, fx.D1), fx.BEAM_ARGS)
    out: dict = {"s1": s1, "reads1": sorted(reads), "day1": day1}
    between()
    reads.clear()
    day2_photos = {k: v for k, v in photos.items() if k != "L3"}
    day2_photos["L2"] = fx.png((5, 250, 5), stripe=3)  # new bytes at the same URI
    day2_photos["L6"] = fx.png((250, 250, 0), stripe=4)  # a new listing
    uris = _catalog_at_fixed_uris(
        catalog,
        fx.D2,
        day2_photos,
        {"L2", "L4", "L6"},
        mtime=10**18 + 86_400 * 10**9,
        checksums=checksums,
    )
    out.update(
        s2=embed.run(fx.settings(catalog, workdir, fx.D2), fx.BEAM_ARGS), reads2=sorted(reads)
    )
    out["extra2"] = runs.read_summary(workdir, "embed", fx.D2)["extra"]  # the day's health record
    out.update(uris=uris, current=embeddings.read_current_table(catalog, workdir, fx.D2, version))
    out["catalog"] = catalog
    out["p2"] = fx.read_partition(workdir, version, fx.D2)
    out["state2"] = fx.read_state(workdir, version, fx.D2)
    out["photos2"] = day2_photos
    out["reads"] = reads  # keeps counting: a test may run more days
    return out


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
    assert (
        new_l2["dt"] == fx.D2 and new_l2["image_uri"] == "images/L2.png"
    )  # as the catalog names it
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
    version = fx.install_model(fake_model_dir, workdir)
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
    straight, grouped, counts = [], [], []
    for out in change_detection._photo_tables(listings, buckets=3, list_objects=True):
        if isinstance(out, beam.pvalue.TaggedOutput) and out.tag == "by_folder":
            grouped += out.value[1].table.to_pylist()
        elif isinstance(out, beam.pvalue.TaggedOutput):  # the job's counts (job_counts.py)
            counts.append(out.value)
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
    assert counts == [("metadata_stat", 3)]  # B's three local photos: one stat each


def test_unchanged_photos_are_not_read_gcs(fake_model_dir, gcs_bucket, monkeypatch) -> None:
    catalog, workdir = storage.join(gcs_bucket, "cat"), storage.join(gcs_bucket, "work")
    version = fx.install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch)
    # On GCS the key is the object's MD5: the identical re-upload of L4 is not even read.
    _expect_day2(r, {"L2", "L6"})
    assert r["extra2"]["files_stat"] == 0 and r["extra2"]["objects_listed"] >= 5


def test_catalog_checksums_need_no_listing_and_no_read(fake_model_dir, tmp_path, monkeypatch):
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch, checksums=True)
    _expect_day2(r, {"L2", "L6"})  # the identical rewrite keeps its checksum: not read
    assert r["extra2"]["objects_listed"] == 0  # no folder was listed at all
    assert r["extra2"]["files_stat"] == 0  # and no file was looked at


def test_day_three_runs_on_the_state_snapshot_alone(fake_model_dir, tmp_path, monkeypatch):
    """Day 2 and day 3 each need only the day before's state snapshot: no earlier partition's
    keys are read, only the photo whose bytes changed is, and each day's snapshot names every
    current photo with the sha256 of its bytes."""
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch)
    assert (r["extra2"]["skip_check"], r["extra2"]["earlier_files"]) == (
        f"state snapshot of {fx.D1}",
        0,
    )
    photos = dict(r["photos2"])
    photos["L5"] = fx.png((1, 120, 3), stripe=2)
    uris = _catalog_at_fixed_uris(catalog, fx.D3, photos, {"L5"}, mtime=10**18 + 2 * 86_400 * 10**9)
    r["reads"].clear()
    s3 = embed.run(fx.settings(catalog, workdir, fx.D3), fx.BEAM_ARGS)
    extra = runs.read_summary(workdir, "embed", fx.D3)["extra"]
    assert (extra["skip_check"], extra["earlier_files"]) == (f"state snapshot of {fx.D2}", 0)
    assert r["reads"] == [uris["L5"]]
    assert (s3.read, s3.ok, s3.skipped) == (5, 1, 4)
    assert fx.read_partition(workdir, version, fx.D3)["listing_id"].to_pylist() == ["L5"]
    assert fx.read_state(workdir, version, fx.D3) == {k: fx.sha(v) for k, v in photos.items()}


def test_a_deleted_partition_sends_the_next_day_back_to_the_full_check(
    fake_model_dir, tmp_path, monkeypatch
):
    """A snapshot is trusted only on the partitions it was made on. With day 1's partition
    deleted (retention, a mistake), day 3 checks the snapshot against the partitions left and
    embeds again the photos whose rows went with day 1, which the snapshot alone would skip."""
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    r = _day1_day2_reads(catalog, workdir, version, monkeypatch)
    storage.delete_prefix(paths.embeddings_dir(workdir, version, fx.D1))
    photos = dict(r["photos2"])
    uris = _catalog_at_fixed_uris(catalog, fx.D3, photos, set(), mtime=0)
    r["reads"].clear()
    s3 = embed.run(fx.settings(catalog, workdir, fx.D3), fx.BEAM_ARGS)
    extra = runs.read_summary(workdir, "embed", fx.D3)["extra"]
    assert extra["skip_check"] == (
        f"every earlier partition (partitions changed since the state of {fx.D2}: {fx.D1})"
    )
    assert extra["earlier_files"] == len(embeddings.partition_files(workdir, version)[fx.D2])
    # L1, L4 and L5 had their rows in day 1's partition; L2 and L6 have theirs in day 2's.
    assert sorted(r["reads"]) == sorted(uris[k] for k in ("L1", "L4", "L5"))
    assert (s3.read, s3.ok, s3.skipped) == (5, 3, 2)
    assert sorted(fx.read_partition(workdir, version, fx.D3)["listing_id"].to_pylist()) == [
        "L1",
        "L4",
        "L5",
    ]
    current = embeddings.read_current_table(catalog, workdir, fx.D3, version)
    assert sorted(current["listing_id"].to_pylist()) == ["L1", "L2", "L4", "L5", "L6"]
    assert fx.read_state(workdir, version, fx.D3) == {k: fx.sha(v) for k, v in photos.items()}


def test_state_from_before_snapshots_is_checked_against_every_partition(
    fake_model_dir, tmp_path, monkeypatch
):
    """A state written before snapshots existed (no ``basis`` in its manifest) still saves the
    reads, checked against the partitions' keys, and the day after runs on a snapshot again."""
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)

    def forget_basis() -> None:
        folder = paths.embed_state_dir(workdir, version, fx.D1)
        manifest = partitions.read_manifest(folder)
        assert manifest is not None and manifest.pop("basis") == {
            fx.D1.isoformat(): manifest["attempt"]
        }
        storage.write_text(storage.join(folder, partitions.MANIFEST), json.dumps(manifest))

    r = _day1_day2_reads(catalog, workdir, version, monkeypatch, between=forget_basis)
    _expect_day2(r, {"L2", "L4", "L6"})
    assert r["extra2"]["skip_check"] == "every earlier partition (no state snapshot)"
    assert r["extra2"]["earlier_files"] == len(embeddings.partition_files(workdir, version)[fx.D1])
    _catalog_at_fixed_uris(catalog, fx.D3, dict(r["photos2"]), set(), mtime=0)
    r["reads"].clear()
    embed.run(fx.settings(catalog, workdir, fx.D3), fx.BEAM_ARGS)
    extra = runs.read_summary(workdir, "embed", fx.D3)["extra"]
    assert extra["skip_check"] == f"state snapshot of {fx.D2}" and r["reads"] == []
