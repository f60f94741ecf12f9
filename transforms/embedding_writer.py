"""WriteEmbeddings: rows -> ``part-NNNNN-of-NNNNN.parquet`` files of the Embedding Parquet contract.

Why not ``beam.io.WriteToParquet``: its finalisation renames temp files through the GCS *batch*
API, which the loopback test server (and some proxies) lack. Here every shard is one DoFn call
that writes one file through ``storage.atomic_writer``, so a file appears under its final name
only when complete, on every filesystem, and a retried bundle simply rewrites the same name.

Shards are chosen by a stable hash of ``listing_id`` (all images of a listing in one file) and
rows are sorted by (listing_id, image_index) inside a shard, so a re-run writes byte-for-byte the
same rows under the same names. ``num_shards=0`` picks one shard per ``rows_per_shard`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam

from core import embeddings, embedstate, paths, storage
from core.hashing import stable_hash
from core.runs import METRICS_NAMESPACE
from transforms.change_detection import bucket_of
from transforms.packed_table import PackedTable

Row = Mapping[str, Any]
DEFAULT_ROWS_PER_SHARD = (
    50_000  # ~50 MB files at D=256: big enough to read fast, small enough to retry
)
WRITE_BATCH_ROWS = 4096


def shard_of(listing_id: str, num_shards: int) -> int:
    """Stable across processes and Python versions (unlike ``hash``)."""
    return stable_hash(listing_id) % num_shards


def shards_for(num_rows: int, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> int:
    return max(1, math.ceil(num_rows / rows_per_shard))


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, dim: int) -> None:
        self._directory = directory
        self._dim = dim

    def process(self, keyed: tuple[tuple[int, int], Iterable[Row]]) -> Iterator[tuple[str, int]]:
        (shard, total), rows = keyed
        ordered = sorted(rows, key=lambda r: (r["listing_id"], r["image_index"]))
        uri = storage.join(self._directory, paths.shard_name(shard, total, ".parquet"))
        batches = (
            embeddings.to_record_batch(ordered[i : i + WRITE_BATCH_ROWS], self._dim)
            for i in range(0, len(ordered), WRITE_BATCH_ROWS)
        )
        n = embeddings.write_parquet(uri, batches, self._dim)
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "embedded").inc(n)
        yield uri, n


class WriteEmbeddings(beam.PTransform):
    """Write embedding rows as Parquet shards; outputs (uri, rows) per file written.

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
    ) -> None:
        super().__init__()
        if num_shards < 0:
            raise ValueError(f"num_shards must be >= 0 (0 = automatic), got {num_shards}")
        self._directory = directory or paths.embeddings_dir(workdir, model_version, date)
        self._dim = dim
        self._num_shards = num_shards
        self._rows_per_shard = rows_per_shard

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        fixed, per_shard = self._num_shards, self._rows_per_shard
        total = (
            rows
            | "CountRows" >> beam.combiners.Count.Globally()
            | "NumShards" >> beam.Map(lambda n: fixed or shards_for(n, per_shard))
        )
        return (
            rows
            | "KeyByShard"
            >> beam.Map(
                lambda r, n: ((shard_of(r["listing_id"], n), n), r),
                n=beam.pvalue.AsSingleton(total),
            )
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShard(self._directory, self._dim))
        )


class _WriteStateBucket(beam.DoFn):
    def __init__(self, directory: str, buckets: int) -> None:
        self._directory = directory
        self._buckets = buckets

    def process(self, keyed: tuple[int, Iterable[Row]]) -> Iterator[tuple[str, int]]:
        bucket, rows = keyed
        ordered = sorted(rows, key=lambda r: (r["listing_id"], r["image_index"]))
        name = embedstate.bucket_file_name("read", bucket, self._buckets)
        uri = storage.join(self._directory, name)
        yield uri, embedstate.write(uri, ordered)


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
    """The state rows of the photos a run read (see core/embedstate.py) as
    ``read-BBBBB-of-NNNNN.parquet``, one file per change-detection bucket like the kept rows', so
    that the next run with as many buckets sends each file to its bucket without hashing it."""

    def __init__(self, directory: str, buckets: int) -> None:
        super().__init__()
        self._directory = directory
        self._buckets = buckets

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyByBucket" >> beam.Map(_keyed_by_bucket, self._buckets)
            | "GroupByBucket" >> beam.GroupByKey()
            | "WriteBucket" >> beam.ParDo(_WriteStateBucket(self._directory, self._buckets))
        )


def _keyed_by_bucket(row: Row, buckets: int) -> tuple[int, Row]:
    return bucket_of(row["listing_id"], buckets), row
