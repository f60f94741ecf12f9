"""The daily embed's listings reader on Arrow columns agrees with the row reader, row for row.

``ReadListingTables`` checks most rows on whole columns and hands only the others to
``catalog_rules.parse_listing``. A user would notice a disagreement as a listing the embed skipped (or
embedded) that check-catalog accepted (or rejected), or a dead letter with another reason.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core import catalog as cat
from core import catalog_rules, paths, snapshot, storage
from core.catalog_columns import split_listings
from transforms.read_listing_tables import ReadListingTables

DATE = "2026-01-01"
ALLOWED = ("shop-photos",)
# updated_at as strings: the ISO-string form of the contract, the one the column rules parse.
SCHEMA = pa.schema(
    [
        ("listing_id", pa.string()),
        ("image_uris", pa.list_(pa.string())),
        ("title", pa.string()),
        ("category", pa.string()),
        ("updated_at", pa.string()),
        ("image_checksums", pa.list_(pa.string())),
    ]
)

GOOD: dict[str, Any] = {
    "listing_id": "L1",
    "image_uris": ["images/L1/0.jpg"],
    "title": "a mug",
    "category": "home/kitchen/mug",
    "updated_at": "2026-01-01T10:00:00",
    "image_checksums": None,
}

ODD_URIS = [
    "images/a.jpg",
    "./images/a.jpg",
    "images//a.jpg",
    "../a.jpg",
    "images/../a.jpg",
    "images/./a.jpg",
    "{root}/images/a.jpg",
    "{root}/../elsewhere/a.jpg",
    "/elsewhere/a.jpg",
    "file://{root}/images/a.jpg",
    "gs://shop-photos/p/a.jpg",
    "gs://other-bucket/a.jpg",
    "gs://shop-photos/",
    "gs://shop-photos",
    "GS://shop-photos/a.jpg",
    "http://example.com/a.jpg",
    "images\\a.jpg",
    "images/a\x01.jpg",
    "",
    " ",
    "images/é.jpg",
    "images/a b.jpg",
    "c:/a.jpg",
    "images/a.jpg/",
    ".hidden/a.jpg",
    "_x/y-1.jpg",
    "_x/-y.jpg",
]
ODD_IDS = ["L1", "", " ", "\u00a0", "\x1c", "é", " L1 ", None, "a/b"]
ODD_CATEGORIES = [
    "home/mug",
    "home",
    "home//mug",
    "/home/mug",
    "home/mug/",
    " /mug",
    "\u00a0/mug",
    "home/\u2003",
    "maison/tasse à café",
    "家/杯",
    "",
    None,
]
ODD_UPDATED = ["2026-01-01", "2026-01-01T10:00:00+01:00", "yesterday", "", None]
ODD_CHECKSUMS: list[Any] = [None, ["abc"], ["abc", "def"], [None], [""], []]
ODD_URI_LISTS: list[Any] = [None, [], [f"images/{i}.jpg" for i in range(11)], ["a.jpg", None]]


def _rows(root: str) -> list[dict[str, Any]]:
    """One row per odd value of one column, the others as in GOOD; ids made unique."""
    rows = []
    for field, values in [
        ("image_uris", [[u.format(root=root)] for u in ODD_URIS] + ODD_URI_LISTS),
        ("listing_id", ODD_IDS),
        ("category", ODD_CATEGORIES),
        ("updated_at", ODD_UPDATED),
        ("image_checksums", ODD_CHECKSUMS),
    ]:
        for v in values:
            rows.append({**GOOD, field: v})
    for i, row in enumerate(rows):
        if row["listing_id"] == "L1":
            row["listing_id"] = f"L{i}"
    # Duplicates: two valid copies; a valid copy with an invalid one; two invalid copies.
    rows += [
        {**GOOD, "listing_id": "twice"},
        {**GOOD, "listing_id": "twice", "image_uris": ["images/other.jpg"]},
        {**GOOD, "listing_id": "half"},
        {**GOOD, "listing_id": "half", "category": "home"},
        {**GOOD, "listing_id": "bad2", "category": "home"},
        {**GOOD, "listing_id": "bad2", "image_uris": []},
    ]
    return rows


def _write(catalog: str, rows: list[dict[str, Any]], row_group_size: int = 7) -> None:
    path = storage.join(paths.catalog_day(catalog, DATE), "listings.parquet")
    os.makedirs(storage.parent(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=row_group_size)


def test_every_row_the_column_rules_accept_parses_identically(tmp_path) -> None:
    """The column rules may only be too strict: a row they accept, parse_listing accepts with
    the same resolved URIs and checksums; and the plain rows take no per-row parse."""
    root = str(tmp_path)
    rows = [r for r in _rows(root) if r["listing_id"] not in ("twice", "half", "bad2")]
    fast, rest = split_listings(pa.Table.from_pylist(rows, schema=SCHEMA), root, ALLOWED)
    assert fast.num_rows + rest.num_rows == len(rows)
    by_id = {}
    for row in rows:
        by_id.setdefault(row["listing_id"], []).append(row)
    for lid, uris, checksums in zip(*(fast.column(i).to_pylist() for i in range(3)), strict=True):
        (row,) = by_id[lid]
        # parse_listing raises if the column checks were too lenient.
        listing = catalog_rules.parse_listing(row, root, ALLOWED)
        assert tuple(uris) == listing.image_uris, row
        assert tuple(checksums or ()) == listing.image_checksums, row
    plain = {"images/a.jpg", f"{root}/images/a.jpg", "gs://shop-photos/p/a.jpg", "_x/y-1.jpg"}
    fast_uris = {u for us in fast.column("image_uris").to_pylist() for u in us}
    for uri in plain:
        resolved = cat.resolve_image_uri(uri, root, ALLOWED)
        assert resolved in fast_uris, f"{uri!r} should not need the row parser"
    # Rows of every kind above are handed to the row parser, not only the invalid ones.
    assert 0 < rest.num_rows < len(rows)


@pytest.mark.parametrize("buckets", [1, 3])
def test_arrow_reader_keeps_and_rejects_the_same_rows_as_the_row_reader(tmp_path, buckets) -> None:
    """Against ``snapshot.read_snapshot``, the row-by-row reader (the same rules as
    ``ReadCatalog``): the same listings kept, the same dead letters with the same reasons."""
    catalog = str(tmp_path)
    _write(catalog, _rows(catalog))
    expected = snapshot.read_snapshot(catalog, DATE, ALLOWED, stage="embed")
    want_kept = [(x.listing_id, x.image_uris, x.image_checksums) for x in expected.listings]
    want_dead = [(d.listing_id, d.uri, d.stage, d.error) for d in expected.rejected]
    assert len(want_kept) > 10 and len(want_dead) > 20
    assert not {"twice", "half", "bad2"} & {k[0] for k in want_kept}
    assert "listings: duplicate listing_id (2 rows); every copy rejected" in {
        d[3] for d in want_dead
    }

    def as_rows(table: pa.Table) -> list[tuple[str, tuple[str, ...], tuple[str | None, ...]]]:
        columns = (table.column(i).to_pylist() for i in range(3))
        return [
            (lid, tuple(uris), tuple(c or None for c in checks or ()))
            for lid, uris, checks in zip(*columns, strict=True)
        ]

    with TestPipeline() as p:
        out = p | ReadListingTables(catalog, DATE, ALLOWED, stage="embed", buckets=buckets)
        kept = out["listings"] | "Kept" >> beam.FlatMap(as_rows)
        dead = out["dead_letter"] | "Dead" >> beam.Map(
            lambda d: (d.listing_id, d.uri, d.stage, d.error)
        )
        assert_that(kept, equal_to(want_kept), label="kept")
        assert_that(dead, equal_to(want_dead), label="dead")


def test_jsonl_listings_come_out_as_the_same_tables(tmp_path) -> None:
    """No columns to check in JSON Lines: the row reader's listings, batched into tables."""
    catalog = str(tmp_path)
    day = paths.catalog_day(catalog, DATE)
    lines = [
        '{"listing_id": "a", "image_uris": ["x/1.jpg", "x/2.jpg"], "category": "home/mug",'
        ' "image_checksums": ["c1", null]}',
        '{"listing_id": "b", "image_uris": ["../y.jpg"], "category": "home/mug"}',
    ]
    storage.write_text(storage.join(day, "listings.jsonl"), "\n".join(lines) + "\n")
    with TestPipeline() as p:
        out = p | ReadListingTables(catalog, DATE, stage="embed")
        rows = out["listings"] | beam.FlatMap(lambda t: t.to_pylist())
        x = storage.join(catalog, "x")
        want = {
            "listing_id": "a",
            "image_uris": [f"{x}/1.jpg", f"{x}/2.jpg"],
            "image_checksums": ["c1", None],
        }
        assert_that(rows, equal_to([want]), label="kept")
        reasons = out["dead_letter"] | beam.Map(lambda d: (d.listing_id, d.error))
        assert_that(
            reasons,
            equal_to([("b", "listings: path traversal ('..') in image URI")]),
            label="dead",
        )


def test_every_odd_value_pairs_with_every_other(tmp_path) -> None:
    """Pairs of odd values (a URI and a category, an id and a checksum list...) never make the
    column rules accept a row parse_listing rejects."""
    root = str(tmp_path)
    rows = []
    uris = [[u.format(root=root)] for u in ODD_URIS[:12]]
    for i, (u, c, t) in enumerate(itertools.product(uris, ODD_CATEGORIES, ODD_UPDATED[:3])):
        rows.append(
            {**GOOD, "listing_id": f"p{i}", "image_uris": u, "category": c, "updated_at": t}
        )
    fast, _ = split_listings(pa.Table.from_pylist(rows), root, ALLOWED)
    by_id = {r["listing_id"]: r for r in rows}
    for lid, resolved in zip(*(fast.column(i).to_pylist() for i in range(2)), strict=True):
        assert tuple(resolved) == catalog_rules.parse_listing(by_id[lid], root, ALLOWED).image_uris
