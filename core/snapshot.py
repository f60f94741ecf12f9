"""Reading a day's catalog snapshot: finding its tables, checking their schema, iterating rows.

What each row must hold, and what happens to each violation, is the contract in
``core.catalog``; this module finds ``listings.{parquet|jsonl}`` and
``reviews.{parquet|jsonl}`` under ``CATALOG/dt=D/`` and applies that contract, row by row, for the
Beam reader (``transforms/read_catalog.py``) and for :func:`read_snapshot` (driver side, small data).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from core import paths, storage
from core.catalog import (
    LISTING_COLUMNS,
    OPTIONAL_STRING_COLUMNS,
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
from core.deadletter import DeadLetter


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
        if table.table == "listings" and _only_blank(table.uri):
            raise CatalogError(
                f"{table.uri} has no listings (empty or only blank lines); "
                "refusing a day with no listings"
            )
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

    def wrong(name: str, want: str) -> CatalogError:
        t = schema.field(name).type
        return CatalogError(f"{table.uri}: column {name} must be {want}, is {t}")

    for name in ("listing_id", "review_id", "category", "image_uri"):
        if name in schema.names and not is_str(schema.field(name).type):
            raise wrong(name, "string")
    if "image_uris" in schema.names:
        t = schema.field("image_uris").type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not is_str(t.value_type):
            raise wrong("image_uris", "list<string>")
    # Optional columns: a wrong type would fail every row the same way, so fail once here.
    # An all-null column (type null) is fine: every value is simply missing.
    for name in OPTIONAL_STRING_COLUMNS:
        t = schema.field(name).type if name in schema.names else pa.null()
        if not (is_str(t) or pa.types.is_null(t)):
            raise wrong(name, "string")
    if "updated_at" in schema.names:
        t = schema.field("updated_at").type
        if not (pa.types.is_timestamp(t) or is_str(t) or pa.types.is_null(t)):
            raise wrong("updated_at", "timestamp (or an ISO 8601 string)")
    known = LISTING_COLUMNS if table.table == "listings" else REVIEW_COLUMNS
    return [c for c in known if c in schema.names]


def _only_blank(uri: str, chunk_size: int = 1 << 20) -> bool:
    """True if the file holds nothing but whitespace (reads only up to the first other byte)."""
    with storage.open_read(uri) as f:
        while chunk := f.read(chunk_size):
            if chunk.strip():
                return False
    return True


def iter_lines(
    f: IO[bytes], start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
) -> Iterator[bytes]:
    """The lines (without ``\\n``) that begin at a byte offset in ``[start, end)``, in bounded memory.

    Every line begins in exactly one of a file's consecutive ranges, so readers of split ranges
    see each line once, and the i-th line of a range is line ``1 + lines in earlier ranges + i``
    of the file (blank lines count: line numbers match an editor's). Beam's GCS reader is not
    line-iterable, hence the buffer.
    """
    pos = start  # byte offset of the next line's start
    first = b""
    if start > 0:  # skip the end of the line that began before ``start``
        f.seek(start - 1)
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                return
            newline = chunk.find(b"\n")
            if newline >= 0:
                pos += newline
                first = chunk[newline + 1 :]
                break
            pos += len(chunk)
    pending: list[bytes] = []  # the start of a line whose end is not read yet
    for chunk in itertools.chain([first], iter(lambda: f.read(chunk_size), b"")):
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        lines = chunk.split(b"\n")
        lines[0] = b"".join([*pending, lines[0]])
        pending = [lines.pop()]
        for line in lines:
            if end is not None and pos >= end:
                return
            yield line
            pos += len(line) + 1
    tail = b"".join(pending)
    if tail and (end is None or pos < end):
        yield tail


def line_ranges(uri: str, split_bytes: int) -> list[tuple[int, int]]:
    """Consecutive byte ranges ``[start, end)`` covering the file, for :func:`iter_lines`."""
    from apache_beam.io.filesystems import FileSystems

    if split_bytes < 1:
        raise ValueError(f"split_bytes must be positive, got {split_bytes}")
    size = int(FileSystems.match([storage.normalize(uri)])[0].metadata_list[0].size_in_bytes)
    return [(s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)]


def iter_rows(table: TableFile) -> Iterator[dict[str, Any] | InvalidRow]:
    """Every row of a table as a dict (driver side), or an InvalidRow for a bad JSONL line."""
    columns = check_table(table)
    try:
        with storage.open_read(table.uri) as f:
            if table.fmt == "jsonl":
                for number, line in enumerate(iter_lines(f), start=1):
                    if line.strip():
                        try:
                            yield parse_json_line(line)
                        except InvalidRow as e:
                            yield InvalidRow(f"line {number}: {e.reason}")
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
    invalid_ids: Counter[str] = Counter()  # rejected rows that still name a listing_id
    for row in iter_rows(listings_table):
        try:
            if isinstance(row, InvalidRow):
                raise row
            listing = parse_listing(row, catalog, allowed_buckets)
        except InvalidRow as e:
            rejected.append(row_dead_letter(e, listings_table, stage))
            if e.listing_id is not None:
                invalid_ids[e.listing_id] += 1
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
            rejected.append(row_dead_letter(e, reviews_table, stage))
            continue
        reviews_by_id[review.listing_id].append(review)
    listings: list[Listing] = []
    reviews: list[Review] = []
    for listing_id in sorted(set(by_id) | set(reviews_by_id)):
        kept_l, kept_r, dead = resolve_duplicates(
            listing_id,
            by_id.get(listing_id, []),
            reviews_by_id.get(listing_id, []),
            stage,
            invalid_ids[listing_id],
        )
        listings += kept_l
        reviews += kept_r
        rejected += dead
    return Snapshot(storage.normalize(catalog), date_s, listings, reviews, rejected)


def row_dead_letter(e: InvalidRow, table: TableFile, stage: str) -> DeadLetter:
    """A rejected row's dead letter: ``table: reason``, at the row's URI or else the table's."""
    return DeadLetter(e.listing_id, e.uri or table.uri, stage, f"{table.table}: {e.reason}")
