"""``ReadTableRows``: one catalog table file as Beam elements; every catalog reader starts here.

``core.snapshot`` finds the table and checks it in the driver (metadata only), so that a snapshot
unusable as a whole fails before any worker starts (``CatalogError``). Then:

* a Parquet file is read a row group at a time (:func:`ReadParquetRowGroups`), each row group a
  split that a Reshuffle hands to any worker (a file source's splits stay on one worker under the
  DirectRunner, and a day's 100M listings must not). ``ReadListingTables`` checks those tables on
  whole columns; ``ReadTableRows`` turns them into rows;
* a JSON Lines file is read as byte ranges (``snapshot.iter_lines``: each line read once), and a
  line that is no JSON object becomes a dead letter naming its line number in the file (each
  range counts its lines, and a bad line is numbered from those counts).

Each row, a dict, goes to the reader's own DoFn (``ReadCatalog``'s runs
``core.snapshot.check_row``) *inside* the reading step: a JSON row may hold a lone surrogate,
which no Beam coder can encode, so it must not cross a step boundary before it is checked.
Counters (namespace "vsearch"): ``{table}_split_readers`` (Parquet), ``rows_rejected`` (bad
JSONL lines).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from core import catalog as cat
from core import snapshot, storage
from core.runs import METRICS_NAMESPACE
from transforms.dead_letter_output import DEAD_LETTER_TAG, tagged_dead_letter

ROWS = "rows"
# One split of a JSON Lines table: ~100k rows per worker task, few enough opens of a GCS object.
DEFAULT_JSONL_SPLIT_BYTES = 64 << 20
_READERS = "readers"
_BAD_LINES = "bad_lines"  # (range start, index in range, reason) of a malformed JSONL line
_LINE_COUNTS = "line_counts"  # (range start, lines in range) of a JSONL table


# ------------------------------------------------------------------------ Parquet


def _row_groups(uri: str) -> Iterator[tuple[str, int]]:
    with storage.open_read(uri) as f:  # the footer only
        count = pq.ParquetFile(f).num_row_groups
    for rg in range(count):
        yield uri, rg


class _ReadRowGroupFn(beam.DoFn):
    """(file, row group) -> the row group's raw rows, as one table (a split any worker takes);
    also outputs ``_READERS``: the process that read it (host:pid)."""

    def __init__(self, columns: list[str]) -> None:
        self._columns = columns

    def setup(self) -> None:
        self._reader = f"{socket.gethostname()}:{os.getpid()}"

    def process(self, split: tuple[str, int]) -> Iterator[Any]:
        uri, rg = split
        try:
            with storage.open_read(uri) as f:
                batch = pq.ParquetFile(f).read_row_group(rg, columns=self._columns)
        except (OSError, ValueError) as e:  # a damaged page: pyarrow's errors subclass these
            raise cat.CatalogError(f"cannot read {uri} row group {rg}: {e}") from e
        yield batch
        yield beam.pvalue.TaggedOutput(_READERS, self._reader)


@beam.ptransform_fn
def ReadParquetRowGroups(  # noqa: N802 - Beam transforms are named like classes
    pbegin: beam.pvalue.PBegin, table: snapshot.TableFile, columns: list[str]
) -> beam.PCollection:
    """PBegin -> one pa.Table per row group of a catalog table's Parquet file, the row groups
    spread over the workers by a Reshuffle (the driver does not open the file).

    Counter ``{table}_split_readers``: how many processes shared the read. (Counted from the
    data, not a string-set metric: the DirectRunner keeps one worker's string set only.)
    """
    read = (
        pbegin
        | "File" >> beam.Create([table.uri])
        | "RowGroups" >> beam.FlatMap(_row_groups)
        | "SpreadRowGroups" >> beam.Reshuffle()
        | "ReadRowGroups"
        >> beam.ParDo(_ReadRowGroupFn(columns)).with_outputs(_READERS, main="tables")
    )
    counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{table.table}_split_readers")
    _ = (
        read[_READERS]
        | "DistinctReaders" >> beam.Distinct()
        | "CountReaders" >> beam.combiners.Count.Globally()
        | "RecordReaders" >> beam.Map(counter.inc)
    )
    return read.tables


# ------------------------------------------------------------------------ JSON Lines


def line_ranges(uri: str, split_bytes: int) -> list[tuple[int, int]]:
    """Consecutive byte ranges ``[start, end)`` covering the file, for ``snapshot.iter_lines``."""
    if split_bytes < 1:
        raise ValueError(f"split_bytes must be positive, got {split_bytes}")
    size = int(FileSystems.match([storage.normalize(uri)])[0].metadata_list[0].size_in_bytes)
    return [(s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)]


class _ReadLineRangeFn(beam.DoFn):
    """A byte range of a JSON Lines file -> ``rows``' outputs for each JSON object in it;
    ``_BAD_LINES`` (range start, index in range, reason) for a line that is not one, and
    ``_LINE_COUNTS`` (range start, lines in range) to number them. Read as bytes: a line that is
    not UTF-8 is one bad line, not a failed read."""

    def __init__(self, uri: str, rows: beam.DoFn) -> None:
        self._uri = uri
        self._rows = rows

    def setup(self) -> None:
        self._rows.setup()
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def process(self, byte_range: tuple[int, int]) -> Iterator[Any]:
        start, end = byte_range
        lines = 0
        with storage.open_read(self._uri) as f:
            for index, line in enumerate(snapshot.iter_lines(f, start, end)):
                lines += 1
                if not line.strip():
                    continue  # blank JSONL line: not a row (it still counts in line numbers)
                try:
                    row = cat.parse_json_line(line)
                except cat.InvalidRow as e:
                    self._rejected.inc()
                    yield beam.pvalue.TaggedOutput(_BAD_LINES, (start, index, e.reason))
                    continue
                yield from self._rows.process(row)
        yield beam.pvalue.TaggedOutput(_LINE_COUNTS, (start, lines))


class _RowGroupRowsFn(beam.DoFn):
    """A row group's table -> ``rows``' outputs for each of its rows."""

    def __init__(self, rows: beam.DoFn) -> None:
        self._rows = rows

    def setup(self) -> None:
        self._rows.setup()

    def process(self, table: Any) -> Iterator[Any]:
        for row in table.to_pylist():
            yield from self._rows.process(row)


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
        rejected = snapshot.bad_line(self._table, before[start] + index + 1, reason, self._stage)
        yield tagged_dead_letter(rejected.dead_letter)


# ------------------------------------------------------------------------ rows


class ReadTableRows(beam.PTransform):
    """PBegin -> the outputs of ``rows`` (a DoFn whose ``process`` takes one row as a dict) on
    every row of a table file: {ROWS: its main output, each of ``tags``, DEAD_LETTER_TAG: its
    dead letters and the table's bad lines}.

    Raises CatalogError while the pipeline is being built when the table is unusable as a whole
    (``snapshot.check_table``).
    """

    def __init__(
        self,
        table: snapshot.TableFile,
        stage: str,
        rows: beam.DoFn,
        tags: Sequence[str] = (),
        jsonl_split_bytes: int = DEFAULT_JSONL_SPLIT_BYTES,
    ) -> None:
        super().__init__()
        if jsonl_split_bytes < 1:
            raise ValueError(f"jsonl_split_bytes must be positive, got {jsonl_split_bytes}")
        self._table = table
        self._stage = stage
        self._rows = rows
        self._tags = [t for t in tags if t != DEAD_LETTER_TAG]
        self._split = jsonl_split_bytes

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        columns = snapshot.check_table(self._table)
        uri = self._table.uri
        if self._table.fmt == "parquet":
            out = (
                pbegin
                | "ReadParquet" >> ReadParquetRowGroups(self._table, columns)
                | "Rows"
                >> beam.ParDo(_RowGroupRowsFn(self._rows)).with_outputs(
                    DEAD_LETTER_TAG, *self._tags, main=ROWS
                )
            )
            return {ROWS: out[ROWS], DEAD_LETTER_TAG: out[DEAD_LETTER_TAG]} | {
                t: out[t] for t in self._tags
            }
        out = (
            pbegin
            | "Ranges" >> beam.Create(line_ranges(uri, self._split))
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadLines"
            >> beam.ParDo(_ReadLineRangeFn(uri, self._rows)).with_outputs(
                DEAD_LETTER_TAG, _BAD_LINES, _LINE_COUNTS, *self._tags, main=ROWS
            )
        )
        before = (
            out[_LINE_COUNTS]
            | "CollectCounts" >> beam.combiners.ToList()
            | "LinesBefore" >> beam.Map(_lines_before)
        )
        numbered = out[_BAD_LINES] | "NumberBadLines" >> beam.ParDo(
            _NumberBadLinesFn(self._table, self._stage), beam.pvalue.AsSingleton(before)
        ).with_outputs(DEAD_LETTER_TAG)
        dead = (out[DEAD_LETTER_TAG], numbered[DEAD_LETTER_TAG]) | "MergeDead" >> beam.Flatten()
        return {ROWS: out[ROWS], DEAD_LETTER_TAG: dead} | {t: out[t] for t in self._tags}
