"""Reading a day's catalog snapshot: finding its tables, checking their schema, iterating rows.

What each row must hold, and what happens to each violation, is the contract in
``vsearch.core.catalog``; this module finds ``listings.{parquet|jsonl}`` and
``reviews.{parquet|jsonl}`` under ``CATALOG/dt=D/`` and applies that contract, row by row, for the
Beam reader (``transforms/read_catalog.py``) and for :func:`read_snapshot` (driver side, small data).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from vsearch.core import paths, storage
from vsearch.core.catalog import (
    LISTING_COLUMNS,
    REQUIRED_COLUMNS,
    REVIEW_COLUMNS,
    CatalogError,
    ImageRef,
    InvalidRow,
    Listing,
    Review,
    bucket_names,
    listing_images,
    parse_json_line,
    parse_listing,
    parse_review,
    resolve_duplicates,
    review_image,
)
from vsearch.core.deadletter import DeadLetter


@dataclass(frozen=True)
class TableFile:
    uri: str
    fmt: Literal["parquet", "jsonl"]
    table: str  # "listings" or "reviews"


@dataclass(frozen=True)
class Snapshot:
    catalog: str
    date: str
    listings: list[Listing] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)

    def images(self) -> list[ImageRef]:
        refs = [ref for listing in self.listings for ref in listing_images(listing)]
        return refs + [review_image(r) for r in self.reviews]


# ------------------------------------------------------------------------ tables


def find_table(catalog: str, date: dt.date | str, table: str) -> TableFile | None:
    """The day's file for a table, or None if absent; CatalogError if both formats exist."""
    found = [uri for uri in paths.catalog_table(catalog, date, table) if storage.exists(uri)]
    if len(found) > 1:
        raise CatalogError(f"both {found[0]} and {found[1]} exist; keep one format per table")
    if not found:
        return None
    return TableFile(found[0], "parquet" if found[0].endswith(".parquet") else "jsonl", table)


def check_table(table: TableFile) -> list[str]:
    """Cheap up-front checks (metadata only); returns the columns to read. Raises CatalogError."""
    if table.fmt == "jsonl":
        if _size(table.uri) == 0 and table.table == "listings":
            raise CatalogError(f"{table.uri} is empty; refusing a day with no listings")
        return list(LISTING_COLUMNS if table.table == "listings" else REVIEW_COLUMNS)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with storage.open_read(table.uri) as f:
            meta = pq.ParquetFile(f)
            schema, rows = meta.schema_arrow, meta.metadata.num_rows
    except Exception as e:
        raise CatalogError(f"cannot read {table.uri}: {type(e).__name__}: {e}") from e
    missing = [c for c in REQUIRED_COLUMNS[table.table] if c not in schema.names]
    if missing:
        raise CatalogError(f"{table.uri} lacks required column(s) {missing}; has {schema.names}")
    if rows == 0 and table.table == "listings":
        raise CatalogError(f"{table.uri} has no rows; refusing a day with no listings")

    def is_str(t: pa.DataType) -> bool:
        if pa.types.is_dictionary(t):  # dictionary-encoded strings read back as strings
            t = t.value_type
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t))

    for name in ("listing_id", "review_id", "category", "image_uri"):
        if name in schema.names and not is_str(schema.field(name).type):
            raise CatalogError(
                f"{table.uri}: column {name} must be string, is {schema.field(name).type}"
            )
    if "image_uris" in schema.names:
        t = schema.field("image_uris").type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not is_str(t.value_type):
            raise CatalogError(f"{table.uri}: column image_uris must be list<string>, is {t}")
    known = LISTING_COLUMNS if table.table == "listings" else REVIEW_COLUMNS
    return [c for c in known if c in schema.names]


def _size(uri: str) -> int:
    from apache_beam.io.filesystems import FileSystems

    return int(FileSystems.match([storage.normalize(uri)])[0].metadata_list[0].size_in_bytes)


def _iter_lines(f: IO[bytes], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream in bounded memory (Beam's GCS reader is not line-iterable)."""
    pending = b""
    while chunk := f.read(chunk_size):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield from lines
    if pending:
        yield pending


def iter_rows(table: TableFile) -> Iterator[dict[str, Any] | InvalidRow]:
    """Every row of a table as a dict (driver side), or an InvalidRow for a bad JSONL line."""
    columns = check_table(table)
    try:
        with storage.open_read(table.uri) as f:
            if table.fmt == "jsonl":
                for line in _iter_lines(f):
                    if line.strip():
                        try:
                            yield parse_json_line(line)
                        except InvalidRow as e:
                            yield e
                return
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=columns):
                yield from batch.to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's errors subclass these
        raise CatalogError(f"cannot read {table.uri}: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------ snapshot


def read_snapshot(
    catalog: str, date: dt.date | str, allowed_buckets: tuple[str, ...] = (), stage: str = "catalog"
) -> Snapshot:
    """Read and validate a whole day's snapshot in this process (small catalogs, tests, demo).

    At scale use ``transforms.read_catalog.ReadCatalog``, which applies the same rules in Beam.
    """
    date_s = date if isinstance(date, str) else date.isoformat()
    bucket_names(allowed_buckets)  # a bad flag is a clear error, not a row-level one
    listings_table = find_table(catalog, date_s, "listings")
    if listings_table is None:
        raise CatalogError(f"no listings table for dt={date_s} under {catalog}")
    rejected: list[DeadLetter] = []
    by_id: dict[str, list[Listing]] = defaultdict(list)
    for row in iter_rows(listings_table):
        try:
            if isinstance(row, InvalidRow):
                raise row
            listing = parse_listing(row, catalog, allowed_buckets)
        except InvalidRow as e:
            rejected.append(_row_dead_letter(e, listings_table, stage))
            continue
        by_id[listing.listing_id].append(listing)
    reviews_by_id: dict[str, list[Review]] = defaultdict(list)
    reviews_table = find_table(catalog, date_s, "reviews")
    for row in iter_rows(reviews_table) if reviews_table else ():
        try:
            if isinstance(row, InvalidRow):
                raise row
            review = parse_review(row, catalog, allowed_buckets)
        except InvalidRow as e:
            assert reviews_table is not None
            rejected.append(_row_dead_letter(e, reviews_table, stage))
            continue
        reviews_by_id[review.listing_id].append(review)
    listings: list[Listing] = []
    reviews: list[Review] = []
    for listing_id in sorted(set(by_id) | set(reviews_by_id)):
        kept_l, kept_r, dead = resolve_duplicates(
            listing_id, by_id.get(listing_id, []), reviews_by_id.get(listing_id, []), stage
        )
        listings += kept_l
        reviews += kept_r
        rejected += dead
    return Snapshot(storage.normalize(catalog), date_s, listings, reviews, rejected)


def _row_dead_letter(e: InvalidRow, table: TableFile, stage: str) -> DeadLetter:
    return DeadLetter(e.listing_id, e.uri or table.uri, stage, f"{table.table}: {e.reason}")
