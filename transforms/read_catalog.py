"""``ReadCatalog``: a day's catalog snapshot as Beam PCollections, validated, at any size.

The tables are read by Beam's own splittable sources (``ReadFromParquet`` by row group,
``ReadFromText`` for JSON Lines), never collected in the driver. The driver only looks at
metadata first (which file exists, the Parquet schema, whether listings is empty) so that a
snapshot that is unusable as a whole fails before any worker starts (``CatalogError``). Rows are
then validated by the functions of ``vsearch.core.catalog`` (the rules and their outcomes are in its
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

from transforms.deadletter import DEAD_LETTER_TAG, dead_letter
from vsearch.core import catalog as cat
from vsearch.core import snapshot, storage
from vsearch.core.deadletter import DeadLetter
from vsearch.core.runs import METRICS_NAMESPACE

LISTINGS = "listings"
REVIEWS = "reviews"
_ROWS = "rows"


class _ParseRowsFn(beam.DoFn):
    """A raw row (Parquet dict or JSONL bytes) -> Listing/Review, or a dead letter."""

    def __init__(
        self, table: snapshot.TableFile, catalog: str, allowed: tuple[str, ...], stage: str
    ):
        self._table = table
        self._catalog = catalog
        self._allowed = allowed
        self._stage = stage

    def setup(self) -> None:
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def process(self, raw: dict[str, Any] | bytes) -> Iterator[Any]:
        if isinstance(raw, bytes) and not raw.strip():
            return iter(())  # blank JSONL line: not a row
        return self._parse(raw)

    def _parse(self, raw: dict[str, Any] | bytes) -> Iterator[Any]:
        try:
            row = cat.parse_json_line(raw) if isinstance(raw, bytes) else raw
            if self._table.table == LISTINGS:
                yield cat.parse_listing(row, self._catalog, self._allowed)
            else:
                yield cat.parse_review(row, self._catalog, self._allowed)
        except cat.InvalidRow as e:
            self._rejected.inc()
            error = f"{self._table.table}: {e.reason}"
            yield dead_letter(self._stage, error, e.listing_id, e.uri or self._table.uri)


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
            listing_id, list(tables[LISTINGS]), list(tables[REVIEWS]), self._stage
        )
        for d in dead:
            self._rejected.inc()
            yield dead_letter(d.stage, d.error, d.listing_id, d.uri)
        for listing in listings:
            self._listings.inc()
            yield listing
        for review in reviews:
            self._reviews.inc()
            yield beam.pvalue.TaggedOutput(REVIEWS, review)


def _key_by_listing(row: cat.Listing | cat.Review) -> tuple[str, cat.Listing | cat.Review]:
    return row.listing_id, row


class _ReadTable(beam.PTransform):
    """Raw rows of one table file: dicts from Parquet, undecoded lines from JSON Lines."""

    def __init__(self, table: snapshot.TableFile, columns: list[str]) -> None:
        super().__init__()
        self._table = table
        self._columns = columns

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self._table.fmt == "parquet":
            return pbegin | beam.io.ReadFromParquet(self._table.uri, columns=self._columns)
        # Bytes, not str: a line that is not UTF-8 becomes a dead letter instead of failing
        # the whole read inside Beam's text coder.
        return pbegin | beam.io.ReadFromText(self._table.uri, coder=beam.coders.BytesCoder())


class ReadCatalog(beam.PTransform):
    """A day's snapshot -> {"listings", "reviews", "dead_letter"} PCollections.

    Raises CatalogError while the pipeline is being built when the snapshot is unusable as a
    whole (no listings table, missing column, unreadable or empty file).
    """

    def __init__(
        self,
        catalog: str,
        date: dt.date | str,
        allowed_buckets: Iterable[str] = (),
        stage: str = "catalog",
    ) -> None:
        super().__init__()
        self._catalog = storage.normalize(catalog)
        self._date = date if isinstance(date, str) else date.isoformat()
        self._allowed = tuple(sorted(cat.bucket_names(allowed_buckets)))
        self._stage = stage

    def _parsed(self, pbegin: beam.pvalue.PBegin, table_name: str) -> Any:
        table = snapshot.find_table(self._catalog, self._date, table_name)
        if table is None:
            if table_name == LISTINGS:
                raise cat.CatalogError(
                    f"no listings table for dt={self._date} under {self._catalog}"
                )
            empty = pbegin | "NoReviews" >> beam.Create([])
            return {_ROWS: empty, DEAD_LETTER_TAG: empty}
        columns = snapshot.check_table(table)
        title = table_name.capitalize()
        return (
            pbegin
            | f"Read{title}" >> _ReadTable(table, columns)
            | f"Parse{title}"
            >> beam.ParDo(
                _ParseRowsFn(table, self._catalog, self._allowed, self._stage)
            ).with_outputs(DEAD_LETTER_TAG, main=_ROWS)
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        listings = self._parsed(pbegin, LISTINGS)
        reviews = self._parsed(pbegin, REVIEWS)
        grouped = {
            LISTINGS: listings[_ROWS] | "KeyListings" >> beam.Map(_key_by_listing),
            REVIEWS: reviews[_ROWS] | "KeyReviews" >> beam.Map(_key_by_listing),
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
