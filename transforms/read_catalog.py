"""``ReadCatalog``: a day's catalog snapshot as Beam PCollections, validated, at any size.

The tables are read in parallel, never collected in the driver: Parquet by Beam's
``ReadFromParquet`` (by row group), JSON Lines as byte ranges read by ``snapshot.iter_lines``
(each line read once, and a malformed line's dead letter names its line number in the file:
each range counts its lines, and a bad line is numbered from those counts). The driver only looks at
metadata first (which file exists, the Parquet schema, whether listings is empty) so that a
snapshot that is unusable as a whole fails before any worker starts (``CatalogError``). Rows are
then validated by the functions of ``core.catalog`` (the rules and their outcomes are in its
module docstring), and listings and reviews are grouped by ``listing_id`` to reject duplicate
ids and orphan reviews.

    cat = p | ReadCatalog(catalog, date)
    cat["listings"]     # Listing
    cat["reviews"]      # Review (of a valid listing)
    cat["dead_letter"]  # DeadLetter: every rejected row, with the reason

Counters (namespace "vsearch"): ``rows_rejected``, ``listings_ok``, ``reviews_ok`` (and
``dead_lettered``, counted by every dead letter).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from core import catalog as cat
from core import snapshot, storage
from core.deadletter import DeadLetter
from core.runs import METRICS_NAMESPACE
from transforms.dead_letter_output import DEAD_LETTER_TAG, dead_letter, tagged_dead_letter

LISTINGS = "listings"
REVIEWS = "reviews"
# One split of a JSON Lines table: ~100k rows per worker task, few enough opens of a GCS object.
DEFAULT_JSONL_SPLIT_BYTES = 64 << 20
_ROWS = "rows"
_INVALID_IDS = "invalid_ids"  # listing_id of each rejected listings row that names one
_BAD_LINES = "bad_lines"  # (range start, index in range, reason) of a malformed JSONL line
_LINE_COUNTS = "line_counts"  # (range start, lines in range) of a JSONL table


class _ParseRowsFn(beam.DoFn):
    """A raw row (Parquet dict, or a located JSONL line) -> Listing/Review, or a dead letter.

    A malformed JSONL line goes out as ``_BAD_LINES`` to be numbered; a rejected listings row
    that names a listing_id also goes out as ``_INVALID_IDS`` (it still counts as a copy).
    """

    def __init__(
        self, table: snapshot.TableFile, catalog: str, allowed: tuple[str, ...], stage: str
    ):
        self._table = table
        self._catalog = catalog
        self._allowed = allowed
        self._stage = stage

    def setup(self) -> None:
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def process(self, raw: dict[str, Any] | tuple[int, int, bytes]) -> Iterator[Any]:
        if isinstance(raw, tuple):
            start, index, line = raw
            if not line.strip():
                return  # blank JSONL line: not a row
            try:
                row = cat.parse_json_line(line)
            except cat.InvalidRow as e:
                self._rejected.inc()
                yield beam.pvalue.TaggedOutput(_BAD_LINES, (start, index, e.reason))
                return
        else:
            row = raw
        try:
            if self._table.table == LISTINGS:
                yield cat.parse_listing(row, self._catalog, self._allowed)
            else:
                yield cat.parse_review(row, self._catalog, self._allowed)
        except cat.InvalidRow as e:
            self._rejected.inc()
            yield tagged_dead_letter(snapshot.row_dead_letter(e, self._table, self._stage))
            if self._table.table == LISTINGS and e.listing_id is not None:
                yield beam.pvalue.TaggedOutput(_INVALID_IDS, e.listing_id)


class _ReadLineRangeFn(beam.DoFn):
    """A byte range of a JSON Lines file -> (range start, index in range, line), undecoded.

    Bytes, not str: a line that is not UTF-8 becomes a dead letter instead of failing the read.
    Also outputs ``_LINE_COUNTS`` (range start, lines in range), to number the bad lines.
    """

    def __init__(self, uri: str) -> None:
        self._uri = uri

    def process(self, byte_range: tuple[int, int]) -> Iterator[Any]:
        start, end = byte_range
        lines = 0
        with storage.open_read(self._uri) as f:
            for line in snapshot.iter_lines(f, start, end):
                yield start, lines, line
                lines += 1
        yield beam.pvalue.TaggedOutput(_LINE_COUNTS, (start, lines))


def _lines_before(counts: list[tuple[int, int]]) -> dict[int, int]:
    """(range start, lines in range) of every range -> range start: lines before the range."""
    before, total = {}, 0
    for start, lines in sorted(counts):
        before[start], total = total, total + lines
    return before


class _NumberBadLinesFn(beam.DoFn):
    """(range start, index in range, reason) -> a dead letter naming the line number."""

    def __init__(self, table: snapshot.TableFile, stage: str) -> None:
        self._table = table
        self._stage = stage

    def process(self, bad: tuple[int, int, str], before: dict[int, int]) -> Iterator[Any]:
        start, index, reason = bad
        error = f"{self._table.table}: line {before[start] + index + 1}: {reason}"
        yield dead_letter(self._stage, error, None, self._table.uri)


class _RejectDuplicatesFn(beam.DoFn):
    """(listing_id, {listings, reviews}) -> the one listing and its reviews, or dead letters."""

    def __init__(self, stage: str) -> None:
        self._stage = stage

    def setup(self) -> None:
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self._listings = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "listings_ok")
        self._reviews = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "reviews_ok")

    def process(self, grouped: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        listing_id, tables = grouped
        listings, reviews, dead = cat.resolve_duplicates(
            listing_id,
            list(tables[LISTINGS]),
            list(tables[REVIEWS]),
            self._stage,
            invalid_copies=sum(1 for _ in tables[_INVALID_IDS]),
        )
        for d in dead:
            self._rejected.inc()
            yield tagged_dead_letter(d)
        for listing in listings:
            self._listings.inc()
            yield listing
        for review in reviews:
            self._reviews.inc()
            yield beam.pvalue.TaggedOutput(REVIEWS, review)


def _key_by_listing(row: cat.Listing | cat.Review) -> tuple[str, cat.Listing | cat.Review]:
    return row.listing_id, row


class _ReadTable(beam.PTransform):
    """One table file -> {_ROWS: Listing/Review, DEAD_LETTER_TAG, _INVALID_IDS}, unresolved."""

    def __init__(self, table: snapshot.TableFile, parse: _ParseRowsFn, stage: str, split: int):
        super().__init__()
        self._table = table
        self._parse = parse
        self._stage = stage
        self._split = split

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        tags = (DEAD_LETTER_TAG, _INVALID_IDS, _BAD_LINES)
        uri = self._table.uri
        if self._table.fmt == "parquet":
            columns = snapshot.check_table(self._table)
            raw = pbegin | "ReadParquet" >> beam.io.ReadFromParquet(uri, columns=columns)
            parsed = raw | "Parse" >> beam.ParDo(self._parse).with_outputs(*tags, main=_ROWS)
            dead = parsed[DEAD_LETTER_TAG]
        else:
            snapshot.check_table(self._table)
            lines = (
                pbegin
                | "Ranges" >> beam.Create(snapshot.line_ranges(uri, self._split))
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadLines"
                >> beam.ParDo(_ReadLineRangeFn(uri)).with_outputs(_LINE_COUNTS, main=_ROWS)
            )
            parsed = lines[_ROWS] | "Parse" >> beam.ParDo(self._parse).with_outputs(
                *tags, main=_ROWS
            )
            before = (
                lines[_LINE_COUNTS]
                | "CollectCounts" >> beam.combiners.ToList()
                | "LinesBefore" >> beam.Map(_lines_before)
            )
            numbered = parsed[_BAD_LINES] | "NumberBadLines" >> beam.ParDo(
                _NumberBadLinesFn(self._table, self._stage), beam.pvalue.AsSingleton(before)
            ).with_outputs(DEAD_LETTER_TAG)
            dead = (parsed[DEAD_LETTER_TAG], numbered[DEAD_LETTER_TAG]) | "MergeDead" >> (
                beam.Flatten()
            )
        return {_ROWS: parsed[_ROWS], DEAD_LETTER_TAG: dead, _INVALID_IDS: parsed[_INVALID_IDS]}


class ReadCatalog(beam.PTransform):
    """A day's snapshot -> {"listings", "reviews", "dead_letter"} PCollections.

    Raises CatalogError while the pipeline is being built when the snapshot is unusable as a
    whole (no listings table, missing column, a column of the wrong type, unreadable file, or a
    listings file with no rows or only blank lines).
    """

    def __init__(
        self,
        catalog: str,
        date: dt.date | str,
        allowed_buckets: Iterable[str] = (),
        stage: str = "catalog",
        jsonl_split_bytes: int = DEFAULT_JSONL_SPLIT_BYTES,
        reviews: bool = True,
    ) -> None:
        super().__init__()
        # False: the reviews table is not read ("reviews" is empty). A stage that never uses
        # review rows (embed) should not parse and shuffle them every day.
        self._reviews = reviews
        if jsonl_split_bytes < 1:
            raise ValueError(f"jsonl_split_bytes must be positive, got {jsonl_split_bytes}")
        self._catalog = storage.normalize(catalog)
        self._date = date if isinstance(date, str) else date.isoformat()
        self._allowed = tuple(sorted(cat.bucket_names(allowed_buckets)))
        self._stage = stage
        self._split = jsonl_split_bytes

    def _parsed(self, pbegin: beam.pvalue.PBegin, table_name: str) -> Any:
        wanted = table_name == LISTINGS or self._reviews
        table = snapshot.find_table(self._catalog, self._date, table_name) if wanted else None
        if table is None:
            if table_name == LISTINGS:
                raise cat.CatalogError(
                    f"no listings table for dt={self._date} under {self._catalog}"
                )
            empty = pbegin | "NoReviews" >> beam.Create([])
            return {_ROWS: empty, DEAD_LETTER_TAG: empty, _INVALID_IDS: empty}
        parse = _ParseRowsFn(table, self._catalog, self._allowed, self._stage)
        return pbegin | f"Read{table_name.capitalize()}" >> _ReadTable(
            table, parse, self._stage, self._split
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        listings = self._parsed(pbegin, LISTINGS)
        reviews = self._parsed(pbegin, REVIEWS)
        grouped = {
            LISTINGS: listings[_ROWS] | "KeyListings" >> beam.Map(_key_by_listing),
            REVIEWS: reviews[_ROWS] | "KeyReviews" >> beam.Map(_key_by_listing),
            _INVALID_IDS: listings[_INVALID_IDS] | "KeyInvalid" >> beam.Map(lambda i: (i, 1)),
        } | "GroupByListingId" >> beam.CoGroupByKey()
        resolved = grouped | "RejectDuplicates" >> beam.ParDo(
            _RejectDuplicatesFn(self._stage)
        ).with_outputs(DEAD_LETTER_TAG, REVIEWS, main=LISTINGS)
        dead: beam.PCollection[DeadLetter] = (
            listings[DEAD_LETTER_TAG],
            reviews[DEAD_LETTER_TAG],
            resolved[DEAD_LETTER_TAG],
        ) | "MergeDeadLetters" >> beam.Flatten()
        return {
            LISTINGS: resolved[LISTINGS],
            REVIEWS: resolved[REVIEWS],
            DEAD_LETTER_TAG: dead,
        }
