"""build-index as a Beam job (DirectRunner), the real embedding reader, and the gs:// flow."""

from __future__ import annotations

import datetime as dt
import functools
import os

import numpy as np
import pytest

from benchmarks import embedding_tables, vectors
from core import embeddings, paths, runs, storage
from index import builder, manifest, publish, source
from index.checksums import ShardError
from index.searcher import Searcher
from pipelines import build_index
from vsearch import stages

DIM = 32
MODEL = "20260101-test"
DATE = dt.date(2026, 1, 3)
BEAM_ARGS = ["--direct_num_workers=1"]


def small_settings(workdir: str, **kw) -> build_index.BuildIndexSettings:  # type: ignore[no-untyped-def]
    index = builder.IndexSettings(validation_queries=200, latency_queries=30, **kw)
    return build_index.BuildIndexSettings(
        "unused-catalog", workdir, DATE, index, model_version=MODEL
    )


@pytest.fixture(scope="module")
def table():  # type: ignore[no-untyped-def]
    return embedding_tables.embedding_table(vectors.clustered(4000, dim=DIM), 2, MODEL)


def test_beam_build_matches_in_process_build(table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    workdir = str(tmp_path / "w")
    settings = small_settings(workdir, factory="IVF16,Flat", shards=3)
    summary = build_index.run(
        settings, BEAM_ARGS, batches_factory=embedding_tables.batches_factory(table, 500)
    )
    assert summary.ntotal == 4000
    assert (
        runs.read_summary(workdir, "build-index", DATE)["extra"]["manifest"] == summary.manifest_uri
    )
    beam_m = manifest.read(str(summary.manifest_uri))
    assert beam_m.validation is not None and beam_m.validation.recall_at_10 >= 0.95
    local = builder.build_index(
        embedding_tables.batches_factory(table, 500),
        settings.index,
        str(tmp_path / "local"),
        MODEL,
        "local",
    )
    assert [e.ntotal for e in beam_m.shards] == [e.ntotal for e in local.manifest.shards]
    q = vectors.clustered(30, dim=DIM, point_seed=7)
    with (
        Searcher.from_manifest_uri(str(summary.manifest_uri)) as a,
        Searcher.from_manifest_uri(local.manifest_uri) as b,
    ):
        sa, _, _ = a.search_raw(q, 10, {"nprobe": 16})
        sb, _, _ = b.search_raw(q, 10, {"nprobe": 16})
        np.testing.assert_allclose(sa, sb, atol=1e-5)


def test_beam_build_multi_processing(table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    summary = build_index.run(
        small_settings(str(tmp_path), factory="Flat", shards=2),
        args,
        batches_factory=embedding_tables.batches_factory(table, 1000),
    )
    m = manifest.read(str(summary.manifest_uri))
    assert m.ntotal == 4000 and len(m.shards) == 2


def test_real_embedding_reader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Embedding Parquet written with the embed stage's own helpers, read by its reader."""
    workdir = str(tmp_path)
    x = vectors.clustered(600, dim=DIM)
    rows = [
        {
            "listing_id": embedding_tables.listing_id(i, 3),
            "image_uri": f"cat/images/{i}.jpg",
            "image_index": i % 3,
            "image_sha256": f"{i:064x}",
            "model_version": MODEL,
            "embedding": x[i],
            "category_pred": "home/decor",
            "category_score": 0.9,
            "created_at": dt.datetime(2026, 1, 3, tzinfo=dt.UTC),
        }
        for i in range(600)
    ]
    part = storage.join(
        paths.embeddings_dir(workdir, MODEL, DATE), paths.shard_name(0, 1, ".parquet")
    )
    embeddings.write_parquet(part, [embeddings.to_record_batch(rows, DIM)], DIM)
    # The snapshot drops one listing: it must leave the index.
    keys = {(r["listing_id"], r["image_index"]) for r in rows if r["listing_id"] != "L00000007"}
    source = functools.partial(
        embeddings.read_current_embeddings, "unused", workdir, DATE, MODEL, 128, image_keys=keys
    )
    summary = build_index.run(
        small_settings(workdir, factory="Flat", shards=2), BEAM_ARGS, batches_factory=source
    )
    assert summary.ntotal == 597
    with Searcher.from_manifest_uri(str(summary.manifest_uri)) as s:
        assert s.search_vectors(x[[5]], 1)[0][0].listing_id == "L00000001"
        assert "L00000007" not in {h.listing_id for h in s.search_vectors(x[[21]], 5)[0]}


def test_whole_flow_on_gcs(table, gcs_bucket: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    workdir = f"{gcs_bucket}/vs"
    storage.write_text(paths.published_model_pointer(workdir), MODEL + "\n")
    summary = build_index.run(
        small_settings(workdir, factory="IVF16,Flat", shards=2),
        BEAM_ARGS,
        batches_factory=embedding_tables.batches_factory(table, 1000),
    )
    uri = str(summary.manifest_uri)
    assert uri.startswith("gs://") and storage.exists(uri)
    publish.publish(workdir, uri)
    cache = str(tmp_path / "cache")
    x = source.batch_vectors(table)
    with Searcher.open(workdir, cache_dir=cache) as s:
        assert s.search_vectors(x[[10]], 3)[0][0].listing_id == embedding_tables.listing_id(10, 2)
    # A shard corrupted in the bucket is caught before faiss reads it (cache bypassed).
    m = manifest.read(uri)
    shard_uri = storage.join(storage.parent(uri), m.shards[0].path)
    data = storage.read_bytes(shard_uri)
    storage.write_bytes(shard_uri, data[: len(data) - 100])
    with pytest.raises(ShardError, match="shard-00000.faiss.*corrupted or truncated"):
        Searcher.open(workdir, cache_dir=str(tmp_path / "fresh-cache"))


def test_on_disk_build_on_gcs_is_merged_uploaded_and_served_from_the_cache(  # type: ignore[no-untyped-def]
    table, gcs_bucket: str, tmp_path
) -> None:
    workdir = f"{gcs_bucket}/vs-ondisk"
    storage.write_text(paths.published_model_pointer(workdir), MODEL + "\n")
    summary = build_index.run(
        small_settings(workdir, factory="IVF16,Flat", shards=3, on_disk=True),
        BEAM_ARGS,
        batches_factory=embedding_tables.batches_factory(table, 1000),
    )
    m = manifest.read(str(summary.manifest_uri))
    build = storage.parent(str(summary.manifest_uri))
    assert m.format_version == 3 and m.merged is not None
    assert storage.exists(storage.join(build, "merged.ivfdata"))
    cache = tmp_path / "cache"
    x = source.batch_vectors(table)
    with Searcher.from_manifest_uri(str(summary.manifest_uri), cache_dir=str(cache)) as s:
        assert s.search_vectors(x[[10]], 3)[0][0].listing_id == embedding_tables.listing_id(10, 2)
    # Both merged files were fetched into one local folder (the index finds its lists beside it).
    local = [p.name for p in cache.rglob("merged.*")]
    assert sorted(local) == ["merged.faiss", "merged.ivfdata"]


def test_cli_flags_parse() -> None:
    settings, beam_args, _ = stages.command("build-index").parse(
        [
            "--catalog",
            "c",
            "--workdir",
            "w",
            "--date",
            "2026-01-02",
            "--factory",
            "IVF64,PQ16",
            "--shards",
            "4",
            "--target-recall",
            "0.9",
            "--memory-budget",
            "2G",
            "--runner",
            "DirectRunner",
        ]
    )
    assert settings.index.factory == "IVF64,PQ16" and settings.index.shards == 4
    assert settings.index.memory_budget_bytes == 2 << 30 and settings.index.target_recall == 0.9
    assert beam_args == ["--runner", "DirectRunner"]
    with pytest.raises(ValueError, match="unsupported"):
        stages.command("build-index").parse(
            ["--catalog", "c", "--workdir", "w", "--date", "2026-01-02", "--factory", "LSH"]
        )


def _partition(workdir: str, day: dt.date, rows: list[dict], batch: int = 7) -> None:  # type: ignore[type-arg]
    """One embedding partition file, several row groups (small batches) to split the read by."""
    uri = storage.join(
        paths.embeddings_dir(workdir, MODEL, day), paths.shard_name(0, 1, ".parquet")
    )
    batches = [
        embeddings.to_record_batch(rows[i : i + batch], DIM) for i in range(0, len(rows), batch)
    ]
    embeddings.write_parquet(uri, batches, DIM)


def _split_snapshot(src: str, dst: str, day: dt.date) -> list[tuple[str, str]]:
    """The day's listings of ``src`` rewritten under ``dst`` as many row groups (splits), with
    bad rows added; returns the (listing_id, reason) dead letters they must give."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(storage.join(paths.catalog_day(src, day), "listings.parquet"))
    good = table.to_pylist()
    bad = [
        {**good[0], "listing_id": "bad-uri", "image_uris": ["../outside.jpg"]},
        {**good[1], "listing_id": "dup"},
        {**good[2], "listing_id": "dup"},
    ]
    out = storage.join(paths.catalog_day(dst, day), "listings.parquet")
    os.makedirs(storage.parent(out))
    pq.write_table(pa.Table.from_pylist(good + bad, schema=table.schema), out, row_group_size=4)
    assert pq.ParquetFile(out).num_row_groups >= 10
    return [
        ("bad-uri", "listings: path traversal ('..') in image URI"),
        ("dup", "listings: duplicate listing_id (2 rows); every copy rejected"),
        ("dup", "listings: duplicate listing_id (2 rows); every copy rejected"),
    ]


def test_parallel_reads_spread_over_workers_and_join_the_snapshot_in_beam(  # type: ignore[no-untyped-def]
    tiny_catalog: str, tmp_path
) -> None:
    """Issue 33 point 2: the snapshot's listings row groups and the embedding row groups are
    read as splits on 2 processes and joined in Beam; the index equals the sequential path's
    (the driver-side reader): removed listings out, a changed photo's new row in, bad listings
    rows dead-lettered with their reason and counted in the run summary."""
    from core.deadletter import read_dead_letters

    workdir, day = str(tmp_path / "work"), DATE
    catalog = str(tmp_path / "catalog")
    want_dead = _split_snapshot(tiny_catalog, catalog, day)
    images = sorted(embeddings.snapshot_images(catalog, day).items())
    x = vectors.clustered(2 * len(images) + 3, dim=DIM, point_seed=3)

    def row(i: int, lid: str, ix: int, uri: str, when: dt.date) -> dict:  # type: ignore[type-arg]
        return {
            "listing_id": lid,
            "image_uri": uri,
            "image_index": ix,
            "image_sha256": f"{i:064x}",
            "model_version": MODEL,
            "embedding": x[i],
            "category_pred": "home/decor",
            "category_score": 0.9,
            "dt": when,
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        }

    old, new = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    # Day 1: every image but two (embed dead-lettered them), a third of them under a URI that
    # has since changed, plus a listing the snapshot no longer has. Day 2: the changed photos'
    # new rows (today's URI).
    not_embedded = {images[4][0], images[5][0]}
    day1 = [
        row(i, lid, ix, uri if i % 3 else f"{uri}.old", old)
        for i, ((lid, ix), uri) in enumerate(images)
        if (lid, ix) not in not_embedded
    ] + [row(len(images), "gone-listing", 0, "gone.jpg", old)]
    # (A changed photo gets a vector of its own: no two current rows may tie in the search below.)
    day2 = [
        row(len(images) + 1 + i, lid, ix, uri, new)
        for i, ((lid, ix), uri) in enumerate(images)
        if i % 3 == 0 and (lid, ix) not in not_embedded
    ]
    _partition(workdir, old, day1)
    _partition(workdir, new, day2)
    expected = embeddings.read_current_table(catalog, workdir, day, MODEL, DIM)
    assert expected.num_rows == len(images) - 2

    def settings(work: str) -> build_index.BuildIndexSettings:
        index = builder.IndexSettings(
            factory="Flat", shards=3, validation_queries=20, latency_queries=5
        )
        return build_index.BuildIndexSettings(
            catalog, work, day, index, model_version=MODEL, review_queries=0
        )

    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    summary = build_index.run(settings(workdir), args, calibrate=False)
    recorded = runs.read_summary(workdir, "build-index", day)
    # More than one process read the listings' row groups (distinct host:pid of the readers).
    assert recorded["extra"]["listings_split_readers"] == 2, recorded["extra"]
    assert summary.ntotal == recorded["ok"] == expected.num_rows
    assert (recorded["read"], recorded["skipped"], recorded["dead_lettered"]) == (
        len(images) + len(want_dead),
        2,
        len(want_dead),
    )
    dead = read_dead_letters(workdir, "build-index", day)
    assert sorted((d["listing_id"], d["error"]) for d in dead) == sorted(want_dead)
    assert {d["stage"] for d in dead} == {"build-index"}

    # The sequential path: the driver-side reader of the same snapshot and partitions.
    sequential = build_index.run(
        settings(str(tmp_path / "sequential")),
        BEAM_ARGS,
        batches_factory=functools.partial(
            embeddings.read_current_embeddings, catalog, workdir, day, MODEL, 128
        ),
    )
    with (
        Searcher.from_manifest_uri(summary.manifest_uri) as s,
        Searcher.from_manifest_uri(sequential.manifest_uri) as q,
    ):

        def ids(searcher: Searcher) -> list[list[tuple[str, int, str]]]:
            return [
                sorted(
                    (r["listing_id"], r["image_index"], r["image_uri"]) for r in sh.ids.to_pylist()
                )
                for sh in searcher.loaded.shards
            ]

        got = ids(s)
        assert got == ids(q)
        want = sorted(
            zip(
                expected.column("listing_id").to_pylist(),
                expected.column("image_index").to_pylist(),
                expected.column("image_uri").to_pylist(),
                strict=True,
            )
        )
        flat = sorted(k for shard in got for k in shard)
        assert flat == want and not any(u.endswith(".old") for _, _, u in flat)
        # Each current vector finds its own image first (the right row's vector was indexed),
        # with the same hits and distances as the sequential build.
        v = source.batch_vectors(expected)
        hits, seq_hits = s.search_vectors(v, 3), q.search_vectors(v, 3)
        assert [h[0].listing_id for h in hits] == expected.column("listing_id").to_pylist()
        assert [[(h.listing_id, h.image_index) for h in r] for r in hits] == [
            [(h.listing_id, h.image_index) for h in r] for r in seq_hits
        ]
        np.testing.assert_allclose(
            [[h.score for h in r] for r in hits],
            [[h.score for h in r] for r in seq_hits],
            atol=1e-6,
        )
    assert not storage.exists(storage.join(storage.parent(summary.manifest_uri), "_view"))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_review_queries_are_a_bounded_sample_of_current_listings_reviews(  # type: ignore[no-untyped-def]
    tiny_catalog: str, tmp_path, fmt: str
) -> None:
    """The validation queries' review photos are sampled in Beam (the driver reads only the
    sample): reviews of current listings only, bounded, the same every run, whichever format
    the reviews table has (the catalog's one reader; a line that is not JSON is left out)."""
    import json

    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.testing.test_pipeline import TestPipeline

    from core import snapshot
    from transforms import review_sample
    from transforms.read_listing_tables import ReadListingTables

    catalog = str(tmp_path / "catalog")
    _split_snapshot(tiny_catalog, catalog, DATE)
    reviews = pq.read_table(storage.join(paths.catalog_day(tiny_catalog, DATE), "reviews.parquet"))
    extra = [
        {**reviews.to_pylist()[0], "review_id": "of-a-rejected-listing", "listing_id": "bad-uri"},
        {**reviews.to_pylist()[1], "review_id": "of-a-duplicate", "listing_id": "dup"},
        {**reviews.to_pylist()[2], "review_id": "bad-photo", "image_uri": "../x.jpg"},
    ]
    table = pa.Table.from_pylist(reviews.to_pylist() + extra, schema=reviews.schema)
    out = storage.join(paths.catalog_day(catalog, DATE), "reviews.parquet")
    if fmt == "parquet":
        pq.write_table(table, out, row_group_size=10)
    else:
        storage.delete([out])
        lines = [json.dumps(row, default=str) for row in table.to_pylist()]
        lines.insert(5, "{not json")
        storage.write_text(out.replace(".parquet", ".jsonl"), "\n".join(lines) + "\n")
    # The reference: the driver-side reader's reviews of valid listings.
    want = {
        (r.review_id, r.listing_id, r.image_uri)
        for r in snapshot.read_snapshot(catalog, DATE).reviews
    }
    assert len(want) == reviews.num_rows > 40

    uri = {n: str(tmp_path / f"sample-{n}.json") for n in ("all", "ten", "ten-again")}
    with TestPipeline() as p:
        listings = (p | ReadListingTables(catalog, DATE, stage="build-index"))["listings"]
        for name, size in (("all", 1000), ("ten", 10), ("ten-again", 10)):
            _ = listings | f"Sample-{name}" >> review_sample.ReviewSample(
                catalog, DATE, uri[name], size, seed=0
            )

    def picked(name: str) -> list[tuple[str, str, str]]:
        return [
            (r.review_id, r.listing_id, r.image_uri) for r in review_sample.read_sample(uri[name])
        ]

    assert set(picked("all")) == want and len(picked("all")) == len(want)
    assert len(picked("ten")) == 10 and set(picked("ten")) <= want
    assert picked("ten") == picked("ten-again")
    assert all(u.startswith(storage.join(catalog, "images")) for _, _, u in picked("ten"))
    with TestPipeline() as p:
        _ = p | beam.Create([]) | review_sample.ReviewSample(catalog, DATE, uri["ten"], 10, seed=1)
    assert picked("ten") == [], "no current listing: no review"


@pytest.mark.parametrize("damage", ["footer", "row-group"])
def test_a_truncated_embedding_file_is_one_line_naming_it(  # type: ignore[no-untyped-def]
    tiny_catalog: str, tmp_path, capsys, damage: str
) -> None:
    """Issue 30 point 9: build-index names the unreadable Parquet file, as embed does; no
    manifest is written, so nothing can be published."""
    from vsearch import cli

    workdir = str(tmp_path / "work")
    images = sorted(embeddings.snapshot_images(tiny_catalog, DATE).items())
    x = vectors.clustered(len(images), dim=DIM, point_seed=3)
    rows = [
        {
            "listing_id": lid,
            "image_uri": uri,
            "image_index": ix,
            "image_sha256": f"{i:064x}",
            "model_version": MODEL,
            "embedding": x[i],
            "category_pred": "home/decor",
            "category_score": 0.9,
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        }
        for i, ((lid, ix), uri) in enumerate(images)
    ]
    _partition(workdir, dt.date(2026, 1, 1), rows[:30])
    _partition(workdir, dt.date(2026, 1, 2), rows[30:])
    part = storage.join(
        paths.embeddings_dir(workdir, MODEL, dt.date(2026, 1, 1)),
        paths.shard_name(0, 1, ".parquet"),
    )
    data = storage.read_bytes(part)
    if damage == "footer":  # a copy that stopped half-way: no footer
        data = data[: len(data) // 2]
    else:  # the footer intact, a data page of the first row group zeroed
        data = data[:4] + bytes(200) + data[204:]
    storage.write_bytes(part, data)
    argv = ["build-index", "--catalog", tiny_catalog, "--workdir", workdir, "--date", "2026-01-03"]
    argv += ["--model-version", MODEL, "--review-queries", "0", "--factory", "Flat"]
    assert cli.main([*argv, "--direct_num_workers=1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("vsearch build-index: error:"), err
    assert part in err[0] and "embedding file" in err[0], err[0]
    assert not storage.glob(storage.join(workdir, "indexes", "*", "*", "manifest.json"))
