"""The catalog stage end to end on the DirectRunner: in-process, multi_processing, and on gs://.

Each run checks what a user sees: the run summary adds up, and every bad row or image has a
dead-letter record with its reason under WORKDIR/deadletter/catalog/dt=D/.
"""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from core import gcs, runs, snapshot, storage
from core.catalog import CatalogError
from core.deadletter import read_dead_letters
from pipelines import check_catalog
from tests import image_fixtures as fx
from tests.test_catalog import listing, write_table
from transforms.read_catalog import ReadCatalog
from vsearch import cli, stages

DATE = dt.date(2026, 1, 1)


def make_catalog(root: str, fmt: str = "parquet", extra_bucket: str | None = None) -> None:
    """A tiny catalog with one of each problem. Expected outcome (see EXPECTED_*):

    image refs of valid rows: L1 x2 + L2 + L6 + review r1 (+ L7 in an allowed bucket) ;
    rejected rows: L3 twice (duplicate), a row without id, L5 (traversal), review of a ghost.
    """
    images = {
        "images/L1-0.jpg": fx.solid(fx.RED),  # a PNG named .jpg: decodes
        "images/L1-1.jpg": fx.noisy_jpeg(),
        "images/L2.jpg": fx.truncated_jpeg(),
        "images/L3.jpg": fx.noisy_jpeg(seed=3),
        "reviews/r1.jpg": fx.cmyk_jpeg(),
    }
    for rel, data in images.items():
        storage.write_bytes(storage.join(root, rel), data)
    rows = [
        listing("L1", uris=["images/L1-0.jpg", "images/L1-1.jpg"]),
        listing("L2", uris=["images/L2.jpg"]),
        listing("L3", uris=["images/L3.jpg"]),
        listing("L3", uris=["images/L3.jpg"], title="second copy"),
        listing(None, uris=["images/L1-0.jpg"]),
        listing("L5", uris=["../outside.jpg"]),
        listing("L6", uris=["images/missing.jpg"]),
    ]
    if extra_bucket:
        storage.write_bytes(f"{extra_bucket}/L7.png", fx.rgba_png())
        rows.append(listing("L7", uris=[f"{extra_bucket}/L7.png"]))
    write_table(root, "listings", rows, fmt)
    reviews = [
        {"review_id": "r1", "listing_id": "L1", "image_uri": "reviews/r1.jpg"},
        {"review_id": "r2", "listing_id": "ghost", "image_uri": "reviews/r1.jpg"},
    ]
    write_table(root, "reviews", reviews, fmt)


EXPECTED_DEAD = {
    ("L2", "listing image: truncated or corrupt jpeg"),
    ("L3", "listings: duplicate listing_id (2 rows); every copy rejected"),
    (None, "listings: missing listing_id"),
    ("L5", "listings: path traversal ('..') in image URI"),
    ("L6", "listing image: cannot read"),
    ("ghost", "reviews: review r2 of a listing that is absent or rejected"),
}


def check_outcome(workdir: str, ok: int, refs: int) -> None:
    summary = runs.read_summary(workdir, "catalog", DATE)
    dead = read_dead_letters(workdir, "catalog", DATE)
    assert summary["read"] == refs + 5  # 5 rejected rows
    assert summary["ok"] == ok
    assert summary["dead_lettered"] == len(dead) == 7
    assert summary["read"] == summary["ok"] + summary["dead_lettered"] + summary["skipped"]
    assert summary["extra"]["rows_rejected"] == 5 and summary["extra"]["image_refs"] == refs
    got = {(d["listing_id"], d["error"]) for d in dead}
    for listing_id, phrase in EXPECTED_DEAD:
        assert any(lid == listing_id and e.startswith(phrase) for lid, e in got), (phrase, got)
    assert all(d["stage"] == "catalog" and d["uri"] for d in dead)


def _settings(catalog: str, workdir: str, **kw) -> check_catalog.CheckCatalogSettings:
    return check_catalog.CheckCatalogSettings(catalog, DATE, workdir, image_size=32, **kw)


@pytest.mark.parametrize(
    "pipeline_args",
    [
        ["--direct_num_workers=1"],
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    ],
    ids=["in-process", "multi-processing"],
)
def test_stage_local(tmp_path, capsys, pipeline_args: list[str]) -> None:
    catalog, workdir = str(tmp_path / "catalog"), str(tmp_path / "work")
    make_catalog(catalog)
    summary = check_catalog.run(_settings(catalog, workdir), pipeline_args)
    assert (summary.read, summary.ok, summary.dead_lettered) == (10, 3, 7)
    check_outcome(workdir, ok=3, refs=5)
    assert "[catalog dt=2026-01-01] read=10 ok=3 dead_lettered=7" in capsys.readouterr().out
    # A re-run replaces the day's dead letters instead of adding to them.
    if pipeline_args == ["--direct_num_workers=1"]:
        check_catalog.run(_settings(catalog, workdir), pipeline_args)
        check_outcome(workdir, ok=3, refs=5)


def test_stage_on_gcs(gcs_bucket: str) -> None:
    catalog, workdir = f"{gcs_bucket}/catalog", f"{gcs_bucket}/work"
    photos = f"{gcs_bucket}-photos"
    gcs.client().create_bucket(photos[len("gs://") :])
    make_catalog(catalog, fmt="jsonl", extra_bucket=photos)
    summary = check_catalog.run(_settings(catalog, workdir, allowed_buckets=(photos,)))
    assert (summary.read, summary.ok, summary.dead_lettered) == (11, 4, 7)
    check_outcome(workdir, ok=4, refs=6)
    assert all(u.startswith(workdir) for u in storage.list_prefix(workdir))


def test_read_catalog_parquet_on_gcs_outputs(gcs_bucket: str) -> None:
    catalog = f"{gcs_bucket}/catalog"
    make_catalog(catalog, fmt="parquet")
    with beam.Pipeline() as p:
        snap = p | ReadCatalog(catalog, DATE)
        assert_that(
            snap["listings"] | beam.Map(lambda x: x.listing_id),
            equal_to(["L1", "L2", "L6"]),
            label="Listings",
        )
        assert_that(
            snap["reviews"] | beam.Map(lambda r: (r.review_id, r.image_uri)),
            equal_to([("r1", f"{catalog}/reviews/r1.jpg")]),
            label="Reviews",
        )
        assert_that(
            snap["dead_letter"] | beam.Map(lambda d: d.listing_id),
            equal_to(["L3", "L3", None, "L5", "ghost"]),
            label="Dead",
        )


def test_unusable_snapshot_is_a_clear_error(tmp_path, capsys) -> None:
    catalog, workdir = str(tmp_path / "catalog"), str(tmp_path / "work")
    with pytest.raises(CatalogError, match="no listings table"):
        check_catalog.run(_settings(catalog, workdir))
    write_table(catalog, "listings", [{"listing_id": "a", "image_uris": ["a.jpg"]}])
    argv = ["check-catalog", "--catalog", catalog, "--date", "2026-01-01", "--workdir", workdir]
    assert cli.main(argv) == 1
    assert "lacks required column(s) ['category']" in capsys.readouterr().err
    assert not storage.exists(storage.join(workdir, "runs"))


def test_help_explains_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["check-catalog", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--catalog",
        "--date",
        "--workdir",
        "--image-size",
        "--allowed-bucket",
        "--max-pixels",
    ):
        assert flag in out
    settings, beam_args, _ = stages.command("check-catalog").parse(
        [
            "--catalog",
            "c",
            "--date",
            "2026-01-02",
            "--workdir",
            "w",
            "--allowed-bucket",
            "b",
            "--runner",
            "DirectRunner",
        ]
    )
    assert settings.allowed_buckets == ("b",) and settings.date == dt.date(2026, 1, 2)
    assert settings.image_size == check_catalog.CheckCatalogSettings.image_size  # no drift
    assert beam_args == ["--runner", "DirectRunner"]
    assert PipelineOptions(beam_args).get_all_options()["runner"] == "DirectRunner"


def test_stage_on_generated_catalog(tmp_path) -> None:
    from synthetic.generate import generate_catalog

    catalog, workdir = str(tmp_path / "catalog"), str(tmp_path / "work")
    gen = generate_catalog(
        catalog,
        listings=12,
        days=1,
        seed=7,
        image_size=48,
        corrupt_fraction=0.2,
        workers=1,
        progress_every=0,
    )
    day = gen.days[0]
    summary = check_catalog.run(_settings(catalog, workdir), ["--direct_num_workers=1"])
    assert summary.read == day.images + day.reviews  # a generated catalog has no bad rows
    assert summary.dead_lettered == day.corrupt_images > 0
    assert summary.ok == summary.read - day.corrupt_images
    dead = read_dead_letters(workdir, "catalog", DATE)
    assert all("image:" in d["error"] for d in dead)


def test_read_catalog_bad_jsonl_lines_are_dead_letters(tmp_path) -> None:
    catalog = str(tmp_path)
    uri = write_table(catalog, "listings", [listing("a"), listing("b")], "jsonl")
    raw = storage.read_bytes(uri) + b"\n{not json\n\xff\xfe\n[1]\n"
    storage.write_bytes(uri, raw)
    with beam.Pipeline() as p:
        snap = p | ReadCatalog(catalog, DATE)
        assert_that(
            snap["listings"] | beam.Map(lambda x: x.listing_id), equal_to(["a", "b"]), label="Ok"
        )
        assert_that(
            snap["dead_letter"] | beam.Map(lambda d: (d.error.split(";")[0], d.uri)),
            equal_to(
                [
                    (
                        "listings: line 4: invalid JSON: Expecting property name enclosed in "
                        "double quotes at column 2",
                        uri,
                    ),
                    ("listings: line 5: line is not UTF-8: invalid start byte", uri),
                    ("listings: line 6: JSON line is a list, not an object", uri),
                ]
            ),
            label="Dead",
        )


def messy_rows() -> list[dict]:
    """Rows that hit every row-level edge of the contract, valid ones among them."""
    return [
        listing("ok-1"),
        listing("dup"),
        listing("dup", category=None),  # invalid copy: the valid one must go too
        listing("toys", category="toys"),  # not a taxonomy path
        listing("ok-2", title="a " * 40),
        listing("trav", uris=["../x.jpg"]),
        listing("ok-3", category="toys/puzzles"),
    ]


@pytest.mark.parametrize(
    ("fmt", "where"), [("parquet", "local"), ("jsonl", "local"), ("jsonl", "gcs")]
)
def test_both_readers_dead_letter_the_same_rows_for_the_same_reasons(
    tmp_path, request: pytest.FixtureRequest, fmt: str, where: str
) -> None:
    catalog = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket") + "/c"
    uri = write_table(catalog, "listings", messy_rows(), fmt)
    reviews = [{"review_id": "r1", "listing_id": "dup", "image_uri": "reviews/r1.jpg"}]
    write_table(catalog, "reviews", reviews, fmt)
    if fmt == "jsonl":  # blank and malformed lines between the rows, some far into the file
        lines = storage.read_text(uri).splitlines()
        lines[2:2] = ["", "{broken", "   "]
        lines += ["", '{"listing_id": "x", "image_uris": [', "null"]
        storage.write_text(uri, "\n".join(lines) + "\n")
    driver = snapshot.read_snapshot(catalog, DATE)
    want_dead = sorted((d.listing_id or "", d.error, d.uri or "") for d in driver.rejected)
    dup = "listings: duplicate listing_id (2 rows); every copy rejected"
    assert [lid for lid, e, _ in want_dead if e == dup] == ["dup"]
    assert any(
        e.startswith("listings: category 'toys' is not a taxonomy path") for _, e, _ in want_dead
    )
    if fmt == "jsonl":
        numbered = [e.split(":")[1].strip() for _, e, _ in want_dead if ": line " in e]
        assert sorted(numbered) == ["line 12", "line 13", "line 4"]
    # Small splits: the Beam reader reads the JSONL file as many ranges, in parallel.
    with beam.Pipeline() as p:
        snap = p | ReadCatalog(catalog, DATE, jsonl_split_bytes=64)
        assert_that(
            snap["listings"] | beam.Map(lambda x: x.listing_id),
            equal_to([x.listing_id for x in driver.listings]),
            label="Listings",
        )
        assert_that(
            snap["dead_letter"] | beam.Map(lambda d: (d.listing_id or "", d.error, d.uri or "")),
            equal_to(want_dead),
            label="Dead",
        )


def test_unusable_tables_fail_before_the_pipeline_runs(tmp_path) -> None:
    catalog = str(tmp_path)
    uri = write_table(catalog, "listings", [], "jsonl")
    storage.write_text(uri, "\n\n   \n")
    with pytest.raises(CatalogError, match="only blank lines"), beam.Pipeline() as p:
        _ = p | ReadCatalog(catalog, DATE)
    storage.delete([uri])
    write_table(catalog, "listings", [listing("a", title=1.5), listing("b", title=2.0)])
    with pytest.raises(CatalogError, match="column title must be string, is double"):
        with beam.Pipeline() as p:
            _ = p | ReadCatalog(catalog, DATE)
