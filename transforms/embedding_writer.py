"""WriteEmbeddings: tables of rows -> ``part-NNNNN-of-NNNNN.parquet`` files of the Embedding Parquet contract.

Elements are Arrow tables of the file schema (``PackedTable``: the embed job makes one per model
batch), never one element per row: at 100k+ photos a Beam step per row, and a pickled dict per
row through the shard shuffle, cost the job more CPU than its reads (BENCHMARKS.md, "Embed job").

Why not ``beam.io.WriteToParquet``: its finalisation renames temp files through the GCS *batch*
API, which the loopback test server (and some proxies) lack. Here every shard is one DoFn call
that writes one file through ``storage.atomic_writer``, so a file appears under its final name
only when complete, on every filesystem, and a retried bundle simply rewrites the same name.

Shards are chosen by a stable hash of ``listing_id`` (all images of a listing in one file) and
rows are sorted by (listing_id, image_index) inside a shard, so a re-run writes byte-for-byte the
same rows under the same names. ``num_shards=0`` picks one shard per ``rows_per_shard`` rows.
The state rows (``WriteState``) travel the same way, split by change-detection bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from core import embeddings, embedstate, paths, storage
from core.hashing import stable_hash
from core.runs import METRICS_NAMESPACE
from transforms.change_detection import split_by_bucket
from transforms.packed_table import PackedTable, split_by

Row = Mapping[str, Any]
ROW_ORDER = [("listing_id", "ascending"), ("image_index", "ascending")]
DEFAULT_ROWS_PER_SHARD = (
    50_000  # ~50 MB files at D=256: big enough to read fast, small enough to retry
)
WRITE_BATCH_ROWS = 4096


def shard_of(listing_id: str, num_shards: int) -> int:
    """Stable across processes and Python versions (unlike ``hash``)."""
    return stable_hash(listing_id) % num_shards


def shards_for(num_rows: int, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> int:
    return max(1, math.ceil(num_rows / rows_per_shard))


def split_by_shard(
    packed: PackedTable, num_shards: int
) -> Iterator[tuple[tuple[int, int], PackedTable]]:
    """((shard, num_shards), rows of ``packed`` in it) for every shard that has rows."""
    table = packed.table
    if table.num_rows == 0:
        return
    ids = table.column("listing_id").to_pylist()
    of = np.fromiter((shard_of(i, num_shards) for i in ids), np.int64, len(ids))
    for shard, rows in split_by(table, of):
        yield (shard, num_shards), rows


def sorted_rows(tables: Iterable[PackedTable], schema: pa.Schema) -> pa.Table:
    """The rows of ``tables`` as one table of ``schema``, in (listing_id, image_index) order."""
    parts = [t.table for t in tables]
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts).sort_by(ROW_ORDER).combine_chunks()


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, dim: int) -> None:
        self._directory = directory
        self._dim = dim

    def process(
        self, keyed: tuple[tuple[int, int], Iterable[PackedTable]]
    ) -> Iterator[tuple[str, int]]:
        (shard, total), tables = keyed
        rows = sorted_rows(tables, embeddings.schema(self._dim))
        uri = storage.join(self._directory, paths.shard_name(shard, total, ".parquet"))
        n = embeddings.write_parquet(
            uri, rows.to_batches(max_chunksize=WRITE_BATCH_ROWS), self._dim
        )
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "embedded").inc(n)
        yield uri, n


class WriteEmbeddings(beam.PTransform):
    """Write tables of embedding rows (``PackedTable`` of ``core.embeddings.schema``) as Parquet
    shards; outputs (uri, rows) per file written. ``expected_rows`` (one int, e.g. the photos a
    job reads) sizes the shards instead of the rows' own count, so rows stream into the shard
    shuffle as they come.

    ``directory`` defaults to the day's partition; the embed job passes a staging folder and
    publishes the files only after its bad-fraction check passed.
    """

    def __init__(
        self,
        workdir: str,
        model_version: str,
        date: Any,
        dim: int,
        num_shards: int = 0,
        *,
        directory: str | None = None,
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        expected_rows: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        if num_shards < 0:
            raise ValueError(f"num_shards must be >= 0 (0 = automatic), got {num_shards}")
        self._directory = directory or paths.embeddings_dir(workdir, model_version, date)
        self._dim = dim
        self._num_shards = num_shards
        self._rows_per_shard = rows_per_shard
        self._expected_rows = expected_rows

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        fixed, per_shard = self._num_shards, self._rows_per_shard
        # Sized by the rows, or by ``expected_rows`` when given: counting the rows themselves
        # makes every row wait for the last before any is keyed (a side input computed from the
        # same PCollection: the runner must hold all of them first).
        rows = (
            self._expected_rows
            if self._expected_rows is not None
            else tables
            | "RowsOfTable" >> beam.Map(lambda t: t.table.num_rows)
            | "CountRows" >> beam.CombineGlobally(sum)
        )
        total = rows | "NumShards" >> beam.Map(lambda n: fixed or shards_for(n, per_shard))
        return (
            tables
            | "KeyByShard" >> beam.FlatMap(split_by_shard, beam.pvalue.AsSingleton(total))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShard(self._directory, self._dim))
        )


class _WriteStateBucket(beam.DoFn):
    def __init__(self, directory: str, buckets: int) -> None:
        self._directory = directory
        self._buckets = buckets

    def process(self, keyed: tuple[int, Iterable[PackedTable]]) -> Iterator[tuple[str, int]]:
        bucket, tables = keyed
        name = embedstate.bucket_file_name("read", bucket, self._buckets)
        uri = storage.join(self._directory, name)
        yield uri, embedstate.write_table(uri, sorted_rows(tables, embedstate.SCHEMA))


class WriteKeptState(beam.DoFn):
    """(bucket, table of state rows) -> ``kept-BBBBB-of-NNNNN.parquet``: the state rows of the
    photos skipped on their metadata, one file per change-detection bucket, written as the
    table came (never a Beam element per row: they are ~99% of a day's photos)."""

    def __init__(self, directory: str, buckets: int) -> None:
        self._directory = directory
        self._buckets = buckets

    def process(self, element: tuple[int, PackedTable]) -> Iterator[tuple[str, int]]:
        bucket, packed = element
        name = embedstate.bucket_file_name("kept", bucket, self._buckets)
        uri = storage.join(self._directory, name)
        yield uri, embedstate.write_table(uri, packed.table)


class WriteState(beam.PTransform):
    """Tables of the state rows of the photos a run read (``PackedTable`` of
    ``core.embedstate.SCHEMA``) as ``read-BBBBB-of-NNNNN.parquet``, one file per change-detection
    bucket like the kept rows', so that the next run with as many buckets sends each file to its
    bucket without hashing it."""

    def __init__(self, directory: str, buckets: int) -> None:
        super().__init__()
        self._directory = directory
        self._buckets = buckets

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        buckets = self._buckets
        return (
            tables
            | "SplitByBucket"
            >> beam.FlatMap(lambda t: split_by_bucket(t.table, "listing_id", buckets))
            | "GroupByBucket" >> beam.GroupByKey()
            | "WriteBucket" >> beam.ParDo(_WriteStateBucket(self._directory, self._buckets))
        )


def state_table(rows: list[Row]) -> PackedTable:
    """State rows (dicts of ``core.embedstate.SCHEMA``'s columns) as one table."""
    return PackedTable(pa.Table.from_pylist([dict(r) for r in rows], schema=embedstate.SCHEMA))
