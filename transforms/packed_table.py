"""``PackedTable``: an Arrow table on its way through a shuffle, pickled as compressed Arrow IPC.

Beam pickles an element it has no coder for, and a pickled ``pa.Table`` is every buffer its
columns point into, whole: a table read from Parquet in five row groups pickled to 637 MB for
127 MB of rows (627k rows of embed state), because each chunk's slice carried the file's whole
buffer. Arrow's IPC stream writes only the rows, and zstd shrinks URIs, listing ids and hex
digests ~8x more (that table: 15.6 MB, 0.06 s to write, 0.02 s to read). Every byte of a shuffle
is copied several times on the DirectRunner and billed on Dataflow Shuffle, so the hash-bucketed
tables of the daily embed (``change_detection.split_by_bucket``) travel in this wrapper.

    yield bucket, PackedTable(table)      # producer
    table = element.table                 # consumer, after the GroupByKey

The bytes are made once per table and kept: Beam pickles an element again at every output it
passes (its size is sampled for the PCollection's metrics by encoding it), and a 1% day of the
627k-photo benchmark packed its few hundred tables 946 times (535 MB, 2.1 s) before they were
kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

COMPRESSION = "zstd"


class PackedTable:
    """Holds ``table``; pickles (Beam's fallback coder) as one zstd-compressed IPC stream, made
    on the first pickle and reused (a table is never changed in place)."""

    __slots__ = ("table", "_packed")

    def __init__(self, table: pa.Table, packed: bytes | None = None) -> None:
        self.table = table
        self._packed = packed

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        if self._packed is None:
            self._packed = pack(self.table)
        return _unpack, (self._packed,)

    def __repr__(self) -> str:
        return f"PackedTable({self.table.num_rows} rows)"


def split_by(table: pa.Table, groups: np.ndarray) -> Iterator[tuple[int, PackedTable]]:
    """(group, rows of ``table`` in it) for every group that has rows, ``groups`` holding each
    row's group (an int); each packed for the shuffle that brings a group's tables together."""
    order = np.argsort(groups, kind="stable")
    ids, starts = np.unique(groups[order], return_index=True)
    if len(ids) == 1:  # one group: the table as it is, no copy
        yield int(ids[0]), PackedTable(table)
        return
    ends = [*starts[1:], len(order)]
    for group, start, end in zip(ids, starts, ends, strict=True):
        yield int(group), PackedTable(table.take(pa.array(order[start:end])))


def pack(table: pa.Table) -> bytes:
    """``table`` as a zstd-compressed Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=COMPRESSION)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _unpack(data: bytes) -> PackedTable:
    return PackedTable(pa.ipc.open_stream(data).read_all(), data)
