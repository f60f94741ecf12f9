"""Reading a day's catalog snapshot: finding its tables, checking their schema, checking rows.

What each row must hold is the rules table of ``core.catalog_rules``, and what happens to each
violation is the contract in ``core.catalog``. This module is the one path every reader takes:
it finds ``listings.{parquet|jsonl}`` and ``reviews.{parquet|jsonl}`` under ``CATALOG/dt=D/``
(:func:`find_table`), refuses an unusable table up front (:func:`check_table`), splits a JSON
Lines file into lines (:func:`iter_lines`) and turns a row into a Listing, a Review or a dead
letter (:func:`check_row`, :func:`bad_line`). The Beam readers (``transforms/read_table_rows.py``
and the transforms built on it) apply these at any size; :func:`read_snapshot` applies them in
this process, for small data (tests, calibration, the demo).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from core import catalog_rules, paths, storage
from core.catalog import (
    CatalogError,
    ImageRef,
    InvalidRow,
    Listing,
    Review,
    bucket_names,
    listing_images,
    parse_json_line,
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
        return [f.name for f in catalog_rules.FIELDS[table.table]]
    import pyarrow.parquet as pq

    try:
        with storage.open_read(table.uri) as f:
            meta = pq.ParquetFile(f)
            schema, rows = meta.schema_arrow, meta.metadata.num_rows
    except Exception as e:
        raise CatalogError(f"cannot read {table.uri}: {type(e).__name__}: {e}") from e
    catalog_rules.check_required(schema.names, table.table, table.uri)
    if rows == 0 and table.table == "listings":
        raise CatalogError(f"{table.uri} has no rows; refusing a day with no listings")
    return catalog_rules.check_types(schema, table.table, table.uri)


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


# ------------------------------------------------------------------------ rows


@dataclass(frozen=True)
class Rejected:
    """A row that breaks the contract: its dead letter, and the listing_id it still counts as a
    copy of (a rejected listings row that names one; see ``catalog.resolve_duplicates``)."""

    dead_letter: DeadLetter
    listing_id: str | None = None


def check_row(
    row: Mapping[str, Any], table: TableFile, catalog: str, allowed: Iterable[str], stage: str
) -> Listing | Review | Rejected:
    """One row of a table -> its Listing or Review (``catalog_rules``), or why it is rejected."""
    try:
        if table.table == "listings":
            return catalog_rules.parse_listing(row, catalog, allowed)
        return catalog_rules.parse_review(row, catalog, allowed)
    except InvalidRow as e:
        copy_of = e.listing_id if table.table == "listings" else None
        return Rejected(row_dead_letter(e, table, stage), copy_of)


def row_dead_letter(e: InvalidRow, table: TableFile, stage: str) -> DeadLetter:
    """A rejected row's dead letter: ``table: reason``, at the row's URI or else the table's."""
    return DeadLetter(e.listing_id, e.uri or table.uri, stage, f"{table.table}: {e.reason}")


def bad_line(table: TableFile, number: int, reason: str, stage: str) -> Rejected:
    """A JSON Lines line that is no JSON object (``catalog.parse_json_line``'s reason), by its
    line number in the file (blank lines count, as in an editor)."""
    return Rejected(DeadLetter(None, table.uri, stage, f"{table.table}: line {number}: {reason}"))


def iter_rows(table: TableFile, stage: str) -> Iterator[dict[str, Any] | Rejected]:
    """Every row of a table as a dict, in this process, or a Rejected bad JSONL line."""
    columns = check_table(table)
    try:
        with storage.open_read(table.uri) as f:
            if table.fmt == "jsonl":
                for number, line in enumerate(iter_lines(f), start=1):
                    if line.strip():
                        try:
                            yield parse_json_line(line)
                        except InvalidRow as e:
                            yield bad_line(table, number, e.reason, stage)
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

    At scale use ``transforms.read_catalog.ReadCatalog``, which applies the same functions in
    Beam.
    """
    date_s = date if isinstance(date, str) else date.isoformat()
    bucket_names(allowed_buckets)  # a bad flag is a clear error, not a row-level one
    listings_table = find_table(catalog, date_s, "listings")
    if listings_table is None:
        raise CatalogError(f"no listings table for dt={date_s} under {catalog}")
    reviews_table = find_table(catalog, date_s, "reviews")
    rejected: list[DeadLetter] = []
    invalid_ids: Counter[str] = Counter()  # rejected listings rows that still name a listing_id
    by_id: dict[str, dict[str, list[Any]]] = defaultdict(lambda: {"listings": [], "reviews": []})
    for table in (listings_table, reviews_table):
        for row in iter_rows(table, stage) if table else ():
            assert table is not None
            checked = (
                row
                if isinstance(row, Rejected)
                else check_row(row, table, catalog, allowed_buckets, stage)
            )
            if isinstance(checked, Rejected):
                rejected.append(checked.dead_letter)
                if checked.listing_id is not None:
                    invalid_ids[checked.listing_id] += 1
            else:
                by_id[checked.listing_id][table.table].append(checked)
    listings: list[Listing] = []
    reviews: list[Review] = []
    for listing_id in sorted(by_id):
        kept_l, kept_r, dead = resolve_duplicates(
            listing_id,
            by_id[listing_id]["listings"],
            by_id[listing_id]["reviews"],
            stage,
            invalid_ids[listing_id],
        )
        listings += kept_l
        reviews += kept_r
        rejected += dead
    return Snapshot(storage.normalize(catalog), date_s, listings, reviews, rejected)
