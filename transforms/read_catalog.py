"""``ReadCatalog``: a day's catalog snapshot as Beam PCollections, validated, at any size.

Each table file is read by ``ReadTableRows`` (``transforms/read_table_rows.py``: Parquet by row
group, JSON Lines by byte range, never collected in the driver; the driver only checks metadata
first, so that a snapshot unusable as a whole fails before any worker starts). Each row is then
checked by ``core.snapshot.check_row`` (the rules table of ``core.catalog_rules``; outcomes in
``core.catalog``'s docstring), and listings and reviews are grouped by ``listing_id`` to reject
duplicate ids and orphan reviews.

    cat = p | ReadCatalog(catalog, date)
    cat["listings"]     # Listing
    cat["reviews"]      # Review (of a valid listing)
    cat["dead_letter"]  # DeadLetter: every rejected row, with the reason

Counters (namespace "vsearch"): ``rows_rejected``, ``listings_ok``, ``reviews_ok`` (and
``dead_lettered``, counted by every dead letter; ``{table}_split_readers`` for Parquet).
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
from transforms.dead_letter_output import DEAD_LETTER_TAG, tagged_dead_letter
from transforms.read_table_rows import DEFAULT_JSONL_SPLIT_BYTES, ROWS, ReadTableRows

LISTINGS = "listings"
REVIEWS = "reviews"
_INVALID_IDS = "invalid_ids"  # listing_id of each rejected listings row that names one


class _CheckRowsFn(beam.DoFn):
    """A raw row -> Listing/Review, or a dead letter; a rejected listings row that names a
    listing_id also goes out as ``_INVALID_IDS`` (it still counts as a copy)."""

    def __init__(
        self, table: snapshot.TableFile, catalog: str, allowed: tuple[str, ...], stage: str
    ):
        self._table = table
        self._catalog = catalog
        self._allowed = allowed
        self._stage = stage

    def setup(self) -> None:
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        checked = snapshot.check_row(row, self._table, self._catalog, self._allowed, self._stage)
        if not isinstance(checked, snapshot.Rejected):
            yield checked
            return
        self._rejected.inc()
        yield tagged_dead_letter(checked.dead_letter)
        if checked.listing_id is not None:
            yield beam.pvalue.TaggedOutput(_INVALID_IDS, checked.listing_id)


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
            return {ROWS: empty, DEAD_LETTER_TAG: empty, _INVALID_IDS: empty}
        check = _CheckRowsFn(table, self._catalog, self._allowed, self._stage)
        return pbegin | f"Read{table_name.capitalize()}" >> ReadTableRows(
            table, self._stage, check, (_INVALID_IDS,), self._split
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        listings = self._parsed(pbegin, LISTINGS)
        reviews = self._parsed(pbegin, REVIEWS)
        grouped = {
            LISTINGS: listings[ROWS] | "KeyListings" >> beam.Map(_key_by_listing),
            REVIEWS: reviews[ROWS] | "KeyReviews" >> beam.Map(_key_by_listing),
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
