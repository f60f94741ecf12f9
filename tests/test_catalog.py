"""The catalog contract: each violation gets the documented outcome (clear error or dead letter)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import catalog, catalog_rules, snapshot, storage
from core.catalog import CatalogError, InvalidRow

DATE = "2026-01-01"


def write_table(root: str, table: str, rows: list[dict], fmt: str = "parquet") -> str:
    """Write a day's table as Parquet (schema inferred) or JSON Lines; returns its URI."""
    uri = storage.join(root, f"dt={DATE}", f"{table}.{fmt}")
    if fmt == "jsonl":
        storage.write_text(uri, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        with storage.atomic_writer(uri) as f:
            pq.write_table(pa.Table.from_pylist(rows), f)
    return uri


def listing(
    lid: str | None, uris: list[str] | None = None, category: str | None = "home/lamps", **kw
):
    row = {"listing_id": lid, "image_uris": uris if uris is not None else [f"images/{lid}.jpg"]}
    return row | {"category": category, "title": f"item {lid}", "color": "red"} | kw


# ------------------------------------------------------------------ URI rules


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("images/a.jpg", "/cat/images/a.jpg"),
        ("./images//a.jpg", "/cat/images/a.jpg"),
        ("/cat/images/a.jpg", "/cat/images/a.jpg"),
        ("file:///cat/x.png", "/cat/x.png"),
        ("gs://photos/a.jpg", "gs://photos/a.jpg"),
    ],
)
def test_uri_resolution_local_root(uri: str, expected: str) -> None:
    assert catalog.resolve_image_uri(uri, "/cat", ("gs://photos",)) == expected


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("../secret.jpg", "path traversal"),
        ("images/../../etc/passwd", "path traversal"),
        ("/etc/passwd", "outside the catalog root"),
        ("/catalog-evil/a.jpg", "outside the catalog root"),  # a sibling sharing the prefix
        ("gs://other-bucket/a.jpg", "outside the catalog root and allowed buckets"),
        ("https://example.com/a.jpg", "unsupported URI scheme"),
        ("images\\..\\a.jpg", "backslash"),
        ("", "empty image URI"),
        (None, "empty image URI"),
    ],
)
def test_uri_violations_refused(uri: str, reason: str) -> None:
    with pytest.raises(InvalidRow, match=reason.replace("(", r"\(")):
        catalog.resolve_image_uri(uri, "/catalog", ("photos",))


@pytest.mark.parametrize(
    ("root", "uri", "name"),
    [
        ("/cat", "./images//a.jpg", "images/a.jpg"),
        ("/cat", "/cat/images/a.jpg", "images/a.jpg"),  # a full path under CATALOG: relative
        ("/cat", "gs://photos/a.jpg", "gs://photos/a.jpg"),  # an allowed bucket: its own URI
        ("gs://shop/catalog", "gs://shop/catalog/x.jpg", "x.jpg"),
    ],
)
def test_outputs_name_photos_as_the_catalog_does_and_they_resolve_back(
    root: str, uri: str, name: str
) -> None:
    full = catalog.resolve_image_uri(uri, root, ("photos",))
    assert catalog.catalog_name(full, root) == name
    assert catalog.resolve_image_uri(name, root, ("photos",)) == full
    # The same catalog moved elsewhere: the name still finds the photo there.
    moved = "/moved" if not root.startswith("gs://") else "gs://other/catalog"
    if not name.startswith("gs://"):
        assert catalog.resolve_image_uri(name, moved).startswith(moved + "/")


def test_uri_resolution_gcs_root() -> None:
    root = "gs://shop/catalog"
    assert catalog.resolve_image_uri("images/a.jpg", root) == "gs://shop/catalog/images/a.jpg"
    assert catalog.resolve_image_uri("gs://shop/catalog/x.jpg", root) == "gs://shop/catalog/x.jpg"
    for bad in ("gs://shop/catalog-other/x.jpg", "gs://shop/x.jpg", "/catalog/x.jpg"):
        with pytest.raises(InvalidRow, match="outside"):
            catalog.resolve_image_uri(bad, root)


# ------------------------------------------------------------------ rows


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (listing(None), "missing listing_id"),
        (listing(""), "missing listing_id"),
        (listing(7), "listing_id must be a string"),  # type: ignore[arg-type]
        (listing("a", uris=[]), "empty image_uris"),
        (listing("a", uris=[f"{i}.jpg" for i in range(11)]), "too many images: 11 > 10"),
        (listing("a", uris="a.jpg"), "image_uris must be a list"),  # type: ignore[arg-type]
        (listing("a", category=None), "missing category"),
        (listing("a", category="home//lamps"), "is not a taxonomy path"),
        (listing("a", color=3), "color must be a string"),
        (listing("a", updated_at="yesterday"), "updated_at is not an ISO timestamp"),
        (listing("a", uris=["ok.jpg", "../x.jpg"]), "path traversal"),
    ],
)
def test_listing_row_violations(row: dict, reason: str) -> None:
    with pytest.raises(InvalidRow, match=reason) as e:
        catalog_rules.parse_listing(row, "/cat")
    if isinstance(row["listing_id"], str) and row["listing_id"]:
        assert e.value.listing_id == row["listing_id"]


def test_valid_listing_row() -> None:
    row = listing("a", uris=["p.jpg", "q.jpg"], color="", updated_at="2026-01-01T10:00:00")
    got = catalog_rules.parse_listing(row, "/cat")
    assert got.image_uris == ("/cat/p.jpg", "/cat/q.jpg")
    assert got.color is None and got.updated_at is not None and got.updated_at.hour == 10
    assert catalog.listing_images(got)[1] == catalog.ImageRef("a", 1, "/cat/q.jpg", "listing")


def test_eval_split_is_stable_and_about_the_fraction() -> None:
    ids = [f"L{i}" for i in range(4000)]
    flags = [catalog.is_eval_listing(i, 0.2) for i in ids]
    assert 0.17 < sum(flags) / len(ids) < 0.23
    assert flags == [catalog.is_eval_listing(i) for i in ids]
    assert catalog.is_eval_listing("L1", 0.0) is False and catalog.is_eval_listing("L1", 1.0)


# ------------------------------------------------------------------ snapshots


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_read_snapshot_dead_letters_each_bad_row(tmp_path, fmt: str) -> None:
    root = str(tmp_path)
    write_table(
        root,
        "listings",
        [
            listing("good"),
            listing("dup"),
            listing("dup", title="other copy"),
            listing(None),
            listing("trav", uris=["../../etc/passwd"]),
            listing("bucket", uris=["gs://elsewhere/a.jpg"]),
        ],
        fmt,
    )
    write_table(
        root,
        "reviews",
        [
            {"review_id": "r1", "listing_id": "good", "image_uri": "reviews/r1.jpg"},
            {"review_id": "r2", "listing_id": "dup", "image_uri": "reviews/r2.jpg"},
            {"review_id": "r3", "listing_id": "nobody", "image_uri": "reviews/r3.jpg"},
        ],
        fmt,
    )
    snap = snapshot.read_snapshot(root, DATE)
    assert [x.listing_id for x in snap.listings] == ["good"]
    assert [r.review_id for r in snap.reviews] == ["r1"]
    reasons = sorted((d.listing_id or "", d.error) for d in snap.rejected)
    assert reasons == [
        ("", "listings: missing listing_id"),
        ("bucket", "listings: image URI outside the catalog root and allowed buckets"),
        ("dup", "listings: duplicate listing_id (2 rows); every copy rejected"),
        ("dup", "listings: duplicate listing_id (2 rows); every copy rejected"),
        ("dup", "reviews: review r2 of a listing with a duplicate listing_id"),
        ("nobody", "reviews: review r3 of a listing that is absent or rejected"),
        ("trav", "listings: path traversal ('..') in image URI"),
    ]
    assert all(d.stage == "catalog" for d in snap.rejected)
    assert [i.uri for i in snap.images()] == [f"{root}/images/good.jpg", f"{root}/reviews/r1.jpg"]


def test_bad_jsonl_line_is_a_dead_letter(tmp_path) -> None:
    uri = write_table(str(tmp_path), "listings", [listing("a")], "jsonl")
    storage.write_text(uri, storage.read_text(uri) + "{not json\n[1, 2]\n")
    snap = snapshot.read_snapshot(str(tmp_path), DATE)
    assert [x.listing_id for x in snap.listings] == ["a"]
    assert sorted(d.error for d in snap.rejected) == [
        "listings: line 2: invalid JSON: Expecting property name enclosed in double quotes "
        "at column 2; line starts '{not json'",
        "listings: line 3: JSON line is a list, not an object; line starts '[1, 2]'",
    ]
    assert all(d.uri == uri for d in snap.rejected)


def test_clear_errors(tmp_path) -> None:
    root = str(tmp_path)
    with pytest.raises(CatalogError, match="no listings table"):
        snapshot.read_snapshot(root, DATE)
    uri = write_table(root, "listings", [{"listing_id": "a", "image_uris": ["a.jpg"]}])
    with pytest.raises(CatalogError, match=r"lacks required column\(s\) \['category'\]"):
        snapshot.read_snapshot(root, DATE)
    write_table(root, "listings", [{"listing_id": 1, "image_uris": ["a.jpg"], "category": "a"}])
    with pytest.raises(CatalogError, match="listing_id must be string"):
        snapshot.read_snapshot(root, DATE)
    storage.write_bytes(uri, b"PAR1 this is not parquet")
    with pytest.raises(CatalogError, match="cannot read"):
        snapshot.read_snapshot(root, DATE)
    storage.delete([uri])
    write_table(root, "listings", [], "jsonl")
    with pytest.raises(CatalogError, match="no listings"):
        snapshot.read_snapshot(root, DATE)
    write_table(root, "listings", [listing("a")], "parquet")
    with pytest.raises(CatalogError, match="keep one format"):
        snapshot.read_snapshot(root, DATE)
    with pytest.raises(ValueError, match="allowed bucket"):
        snapshot.read_snapshot(root, DATE, allowed_buckets=("gs://a/b",))


def test_read_snapshot_on_gcs(gcs_bucket: str) -> None:
    root = gcs_bucket + "/catalog"
    write_table(root, "listings", [listing("a"), listing("b", uris=["gs://photos/b.jpg"])])
    snap = snapshot.read_snapshot(root, DATE, allowed_buckets=("photos",))
    assert [x.image_uris for x in snap.listings] == [
        (f"{root}/images/a.jpg",),
        ("gs://photos/b.jpg",),
    ]
    assert snap.reviews == [] and snap.rejected == []


# ------------------------------------------------------------------ contract edges


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_duplicate_id_rejects_every_copy_even_an_invalid_one(tmp_path, fmt: str) -> None:
    root = str(tmp_path)
    rows = [listing("ok"), listing("dup"), listing("dup", category=None), listing("trip")]
    rows += [listing("trip", uris=["../x.jpg"]), listing("trip", title="third")]
    write_table(root, "listings", rows, fmt)
    review = {"review_id": "r1", "listing_id": "dup", "image_uri": "reviews/r1.jpg"}
    write_table(root, "reviews", [review], fmt)
    snap = snapshot.read_snapshot(root, DATE)
    assert [x.listing_id for x in snap.listings] == ["ok"] and snap.reviews == []
    assert sorted((d.listing_id, d.error) for d in snap.rejected) == [
        ("dup", "listings: duplicate listing_id (2 rows); every copy rejected"),
        ("dup", "listings: missing category"),
        ("dup", "reviews: review r1 of a listing with a duplicate listing_id"),
        ("trip", "listings: duplicate listing_id (3 rows); every copy rejected"),
        ("trip", "listings: duplicate listing_id (3 rows); every copy rejected"),
        ("trip", "listings: path traversal ('..') in image URI"),
    ]


@pytest.mark.parametrize("category", ["toys", "Toys & Games", " / ", "home/", "/home/kitchen"])
def test_category_that_is_not_a_taxonomy_path_is_a_dead_letter(category: str) -> None:
    with pytest.raises(InvalidRow, match="category .* is not a taxonomy path") as e:
        catalog_rules.parse_listing(listing("a", category=category), "/cat")
    assert e.value.listing_id == "a"


@pytest.mark.parametrize("category", ["home/kitchen/mug", "toys/puzzles", "a/b/c/d/e"])
def test_taxonomy_paths_of_any_depth_from_two_are_valid(category: str) -> None:
    assert catalog_rules.parse_listing(listing("a", category=category), "/cat").category == category


@pytest.mark.parametrize(
    ("column", "values", "want"),
    [
        ("title", [1.5, 2.5], "string"),
        ("color", [1, 2], "string"),
        ("material", [True, False], "string"),
        ("updated_at", [1, 2], "timestamp"),
    ],
)
def test_optional_column_of_wrong_type_is_one_clear_error(
    tmp_path, column: str, values: list, want: str
) -> None:
    rows = [listing(lid) | {column: v} for lid, v in zip("ab", values, strict=True)]
    write_table(str(tmp_path), "listings", rows)
    with pytest.raises(CatalogError, match=f"column {column} must be {want}"):
        snapshot.read_snapshot(str(tmp_path), DATE)


def test_optional_columns_all_null_or_as_iso_strings_are_fine(tmp_path) -> None:
    rows = [listing(lid, title=None, color=None, updated_at="2026-01-01T10:00:00") for lid in "ab"]
    write_table(str(tmp_path), "listings", rows)
    snap = snapshot.read_snapshot(str(tmp_path), DATE)
    assert [(x.title, x.color) for x in snap.listings] == [(None, None), (None, None)]
    assert snap.rejected == []


@pytest.mark.parametrize("content", ["", "\n", "\n\n  \n\t\n", "\r\n\r\n"])
def test_jsonl_listings_of_blank_lines_is_zero_listings(tmp_path, content: str) -> None:
    uri = write_table(str(tmp_path), "listings", [], "jsonl")
    storage.write_text(uri, content)
    with pytest.raises(CatalogError, match=f"{uri} .*no listings"):
        snapshot.read_snapshot(str(tmp_path), DATE)


def test_malformed_json_lines_name_line_number_and_a_safe_excerpt(tmp_path) -> None:
    uri = write_table(str(tmp_path), "listings", [listing("a")], "jsonl")
    hostile = "\x1b[2J\u202e" + "x" * 500  # terminal escape, bidi override, a very long line
    lines = [storage.read_text(uri).strip(), "", "{not json", hostile, '"a string"']
    storage.write_text(uri, "\n".join(lines) + "\n")
    snap = snapshot.read_snapshot(str(tmp_path), DATE)
    assert [x.listing_id for x in snap.listings] == ["a"]
    errors = sorted(d.error for d in snap.rejected)
    assert errors[0] == (
        "listings: line 3: invalid JSON: Expecting property name enclosed in double quotes "
        "at column 2; line starts '{not json'"
    )
    assert errors[1].startswith("listings: line 4: invalid JSON: Expecting value at column 1;")
    assert errors[1].endswith(r"line starts '\x1b[2J\u202e" + "x" * 35 + "'...")
    assert (
        errors[2]
        == "listings: line 5: JSON line is a str, not an object; line starts '\"a string\"'"
    )
    assert all(d.uri == uri for d in snap.rejected)


@pytest.mark.parametrize("chunk_size", [1, 3, 1 << 20])
def test_split_ranges_of_a_jsonl_file_see_every_line_once_in_order(chunk_size: int) -> None:
    data = b'first\n\n{"a": 1}\nlonger line here\n\r\nx\nno newline at the end'
    whole = list(snapshot.iter_lines(io.BytesIO(data), chunk_size=chunk_size))
    assert whole == data.split(b"\n")
    for a in range(len(data) + 1):  # every way to cut the file in three ranges
        for b in range(a, len(data) + 1):
            parts = [
                list(snapshot.iter_lines(io.BytesIO(data), lo, hi, chunk_size=chunk_size))
                for lo, hi in ((0, a), (a, b), (b, len(data)))
            ]
            assert parts[0] + parts[1] + parts[2] == whole, (a, b)
    assert list(snapshot.iter_lines(io.BytesIO(b"a\nb\n"))) == [b"a", b"b"]
