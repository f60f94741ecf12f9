"""The day's current embeddings as a PCollection of rows, read in parallel and joined in Beam.

The same answer as ``vsearch.core.embeddings.read_current_embeddings`` (one row per snapshot
image: the newest row whose image_uri is today's URI, else the newest row), computed the
distributed way:

    embedding partitions dt <= date -> (file, row group) splits -> Reshuffle -> read one row group
        -> ((listing_id, image_index), (day, row))  ┐
    snapshot images -> ((listing_id, image_index), uri) ┴ CoGroupByKey -> the current row

No structure of the snapshot's size is built in the driver or pickled into the graph: the
driver only lists the partition files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from index.source import IndexBuildError
from vsearch.core import embeddings

# A current row: (listing_id, image_uri, image_index, category_pred, model_version, embedding)
Row = tuple[str, str, int, str | None, str, np.ndarray]
ImageKey = tuple[str, int]
SnapshotFn = Callable[[], Iterable[tuple[ImageKey, str]]]


def rows_of(batch: pa.RecordBatch) -> Iterator[Row]:
    """Rows of an embedding batch (any batch with the contract's columns)."""
    vectors = embeddings_matrix(batch)
    names = batch.schema.names
    cat = batch.column("category_pred").to_pylist() if "category_pred" in names else None
    ver = batch.column("model_version").to_pylist() if "model_version" in names else None
    for i, (lid, uri, ix) in enumerate(
        zip(
            batch.column("listing_id").to_pylist(),
            batch.column("image_uri").to_pylist(),
            batch.column("image_index").to_pylist(),
            strict=True,
        )
    ):
        yield (lid, uri, int(ix), cat[i] if cat else None, ver[i] if ver else "", vectors[i])


def embeddings_matrix(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    col = batch.column("embedding")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(col), col.type.list_size), dtype=np.float32)


def _unreadable(uri: str, e: Exception) -> IndexBuildError:
    """One clear error naming the file (pyarrow's own message does not), as embed says it."""
    return IndexBuildError(
        f"embedding file {uri} is unreadable ({type(e).__name__}: {e}); "
        "restore it or delete its day's partition and re-run embed for that day"
    )


def _row_groups(element: tuple[str, str]) -> Iterator[tuple[str, str, int]]:
    day, uri = element
    try:
        pf = embeddings.open_parquet(uri)
    except Exception as e:  # a truncated copy: no footer; pyarrow raises several types
        raise _unreadable(uri, e) from e
    expected = embeddings.schema(embeddings.embedding_dim(pf.schema_arrow))
    if not pf.schema_arrow.equals(expected):
        raise ValueError(f"{uri} does not have the embedding schema:\n{pf.schema_arrow}")
    for rg in range(pf.num_row_groups):
        yield day, uri, rg


class _ReadRowGroupFn(beam.DoFn):
    """One row group of one partition file -> keyed rows (a split any worker can take)."""

    def setup(self) -> None:
        self._rows = beam.metrics.Metrics.counter("vsearch", "embedding_rows_read")

    def process(self, element: tuple[str, str, int]) -> Iterator[tuple[ImageKey, tuple[str, Row]]]:
        day, uri, rg = element
        try:
            batch = embeddings.open_parquet(uri).read_row_group(rg)
        except Exception as e:  # a damaged page in an intact footer's file
            raise _unreadable(uri, e) from e
        self._rows.inc(batch.num_rows)
        for b in batch.to_batches():
            for row in rows_of(b):
                yield (row[0], row[2]), (day, row)


def _current(element: tuple[ImageKey, dict[str, list[Any]]]) -> list[Row]:
    """The current row of one image: in the snapshot, newest with today's URI, else newest."""
    _, grouped = element
    uris, rows = list(grouped["snapshot"]), list(grouped["rows"])
    if not uris or not rows:
        return []  # removed from the catalog, or not embedded (yet)
    newest_first = sorted(rows, key=lambda r: r[0], reverse=True)
    exact = [r for _, r in newest_first if r[1] == uris[0]]
    return [exact[0] if exact else newest_first[0][1]]


class ReadCurrentEmbeddings(beam.PTransform):  # type: ignore[misc]
    """PBegin -> current rows of ``model_version`` for ``date`` (see the module docstring)."""

    def __init__(
        self, workdir: str, model_version: str, date: dt.date, snapshot: SnapshotFn
    ) -> None:
        super().__init__()
        self._workdir, self._version, self._date = workdir, model_version, date
        self._snapshot = snapshot

    def expand(self, pbegin: Any) -> Any:
        files = [
            (day.isoformat(), uri)
            for day, uris in embeddings.files_through(self._workdir, self._version, self._date)
            for uri in uris
        ]
        rows = (
            pbegin
            | "Files" >> beam.Create(files)
            | "RowGroups" >> beam.FlatMap(_row_groups)
            | "SpreadSplits" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.ParDo(_ReadRowGroupFn())
        )
        snapshot_fn = self._snapshot
        snapshot = (
            pbegin
            | "Start" >> beam.Create([None])
            | "SnapshotImages" >> beam.FlatMap(lambda _: snapshot_fn())
        )
        return (
            {"snapshot": snapshot, "rows": rows}
            | "JoinSnapshot" >> beam.CoGroupByKey()
            | "CurrentRow" >> beam.FlatMap(_current)
        )


def snapshot_images_fn(catalog: str, date: dt.date) -> SnapshotFn:
    """The snapshot's (listing_id, image_index) -> URI, read on a worker (picklable)."""

    def read() -> Iterable[tuple[ImageKey, str]]:
        return embeddings.snapshot_images(catalog, date).items()

    return read
