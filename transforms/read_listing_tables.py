"""``ReadListingTables``: a day's listings as Arrow tables of valid rows, for the daily embed.

The same outcome as ``ReadCatalog(reviews=False)`` (same rows kept, same dead letters with the
same reasons, same counters), without a Python object per listing. A Parquet table is read a row
group at a time by ``read_table_rows.ReadParquetRowGroups`` (the one catalog reading path);
``core.catalog_columns.split_listings`` checks each row group on whole columns with the rules
table's column checks, and only the rows those do not accept are checked one at a time by
``core.snapshot.check_row``, as every other reader checks them. Duplicate ids are found per hash
bucket of ``listing_id`` with one Arrow group-by count, so at 100M listings a bucket is one
element of the shuffle, not 100k. A JSON Lines table has no columns to check: it goes through
``ReadCatalog``'s row reader and its listings are then batched into the same tables.

    out = p | ReadListingTables(catalog, date, stage="embed", buckets=1)
    out["listings"]     # pa.Table, catalog_columns.LISTING_TABLE: valid, unique listing ids
    out["dead_letter"]  # DeadLetter: every rejected row, with the reason
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from core import catalog as cat
from core import snapshot, storage
from core.catalog_columns import LISTING_TABLE, listing_table, split_listings
from core.runs import METRICS_NAMESPACE
from transforms.change_detection import split_by_bucket
from transforms.dead_letter_output import DEAD_LETTER_TAG, dead_letter, tagged_dead_letter
from transforms.job_counts import COUNTS_TAG, tally
from transforms.packed_table import PackedTable
from transforms.read_catalog import LISTINGS, ReadCatalog
from transforms.read_table_rows import ReadParquetRowGroups

# LISTING_TABLE plus the rejected rows that name an id (they still count as copies of it).
_CHECKED = pa.schema([*LISTING_TABLE, ("valid", pa.bool_())])


class _CheckBatchFn(beam.DoFn):
    """A row group of raw listings -> (listing bucket, checked rows), and dead letters."""

    def __init__(
        self,
        table: snapshot.TableFile,
        catalog: str,
        allowed: tuple[str, ...],
        stage: str,
        buckets: int,
    ) -> None:
        self._table = table
        self._catalog = catalog
        self._allowed = allowed
        self._stage = stage
        self._buckets = buckets

    def setup(self) -> None:
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def process(self, batch: pa.Table) -> Iterator[Any]:
        fast, rest = split_listings(batch, self._catalog, self._allowed)
        parsed: list[cat.Listing] = []
        invalid_ids: list[str] = []
        yield tally("listing_rows_parsed_alone", rest.num_rows)  # the slow path's share
        for row in rest.to_pylist():
            checked = snapshot.check_row(
                row, self._table, self._catalog, self._allowed, self._stage
            )
            if isinstance(checked, snapshot.Rejected):
                self._rejected.inc()
                yield tagged_dead_letter(checked.dead_letter)
                if checked.listing_id is not None:
                    invalid_ids.append(checked.listing_id)
            else:
                assert isinstance(checked, cat.Listing)
                parsed.append(checked)
        invalid = pa.Table.from_arrays(
            [
                pa.array(invalid_ids, pa.string()),
                pa.nulls(len(invalid_ids), pa.list_(pa.string())),
                pa.nulls(len(invalid_ids), pa.list_(pa.string())),
            ],
            schema=LISTING_TABLE,
        )
        parts = [(fast, True), (listing_table(parsed), True), (invalid, False)]
        checked = pa.concat_tables(
            [t.append_column("valid", pa.repeat(valid, t.num_rows)) for t, valid in parts]
        )
        yield from split_by_bucket(checked, "listing_id", self._buckets)


class _RejectDuplicatesFn(beam.DoFn):
    """(bucket, checked tables) -> the valid listings whose id is on one row only, as one table;
    every valid copy of a repeated id -> a dead letter (``catalog.duplicate_reason``)."""

    def __init__(self, stage: str) -> None:
        self._stage = stage

    def setup(self) -> None:
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self._listings = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "listings_ok")

    def process(self, grouped: tuple[int, Iterable[PackedTable]]) -> Iterator[Any]:
        parts = [packed.table for packed in grouped[1]]
        table = pa.concat_tables(parts) if parts else _CHECKED.empty_table()
        counts = table.group_by("listing_id").aggregate([("listing_id", "count")])
        repeated = counts.filter(pc.greater(counts["listing_id_count"], 1))
        valid = table.filter(table["valid"]).drop_columns(["valid"])
        if repeated.num_rows:
            copies = dict(zip(*(repeated.column(i).to_pylist() for i in range(2)), strict=True))
            is_copy = pc.is_in(valid["listing_id"], value_set=repeated["listing_id"])
            for lid, uris in zip(
                *(
                    valid.filter(is_copy).column(n).to_pylist()
                    for n in ("listing_id", "image_uris")
                ),
                strict=True,
            ):
                self._rejected.inc()
                yield dead_letter(self._stage, cat.duplicate_reason(copies[lid]), lid, uris[0])
            valid = valid.filter(pc.invert(is_copy))
        self._listings.inc(valid.num_rows)
        if valid.num_rows:
            yield valid


class ReadListingTables(beam.PTransform):
    """A day's listings -> {"listings": pa.Table (LISTING_TABLE), "dead_letter": DeadLetter,
    "counts": (name, n) (``transforms/job_counts.py``: the rows parsed one at a time)}.

    Raises CatalogError while the pipeline is being built when the snapshot is unusable as a
    whole (the same checks as ``ReadCatalog``).
    """

    def __init__(
        self,
        catalog: str,
        date: dt.date | str,
        allowed_buckets: Iterable[str] = (),
        stage: str = "catalog",
        buckets: int = 1,
    ) -> None:
        super().__init__()
        self._catalog = storage.normalize(catalog)
        self._date = date if isinstance(date, str) else date.isoformat()
        self._allowed = tuple(sorted(cat.bucket_names(allowed_buckets)))
        self._stage = stage
        self._buckets = buckets

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        table = snapshot.find_table(self._catalog, self._date, LISTINGS)
        if table is None or table.fmt != "parquet":
            rows = pbegin | "ReadRows" >> ReadCatalog(
                self._catalog, self._date, self._allowed, self._stage, reviews=False
            )
            listings = (
                rows[LISTINGS]
                | "Batch" >> beam.BatchElements(min_batch_size=1000, max_batch_size=50_000)
                | "ToTables" >> beam.Map(listing_table)
            )
            none = pbegin | "NoCounts" >> beam.Create([])  # rows are parsed one at a time here
            return {LISTINGS: listings, DEAD_LETTER_TAG: rows[DEAD_LETTER_TAG], COUNTS_TAG: none}
        columns = snapshot.check_table(table)
        checked = (
            pbegin
            | "ReadParquet" >> ReadParquetRowGroups(table, columns)
            | "Check"
            >> beam.ParDo(
                _CheckBatchFn(table, self._catalog, self._allowed, self._stage, self._buckets)
            ).with_outputs(DEAD_LETTER_TAG, COUNTS_TAG, main="rows")
        )
        resolved = (
            checked.rows
            | "GroupByBucket" >> beam.GroupByKey()
            | "RejectDuplicates"
            >> beam.ParDo(_RejectDuplicatesFn(self._stage)).with_outputs(
                DEAD_LETTER_TAG, main=LISTINGS
            )
        )
        dead = (checked[DEAD_LETTER_TAG], resolved[DEAD_LETTER_TAG]) | "MergeDead" >> beam.Flatten()
        return {
            LISTINGS: resolved[LISTINGS],
            DEAD_LETTER_TAG: dead,
            COUNTS_TAG: checked[COUNTS_TAG],
        }
