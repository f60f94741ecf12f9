"""The day's current embeddings as a PCollection of rows, read in parallel and joined in Beam.

The same answer as ``core.embeddings.read_current_embeddings`` (one row per snapshot
image: the newest row whose image_uri is today's URI, else the newest row), computed the
distributed way:

    embedding partitions dt <= date -> (file, row group) splits -> Reshuffle -> read one row group
        -> ((listing_id, image_index), (day, row))  ┐
                                                    ├ CoGroupByKey -> the current row
        ((listing_id, image_index), uri)            ┘
            <- listings: (file, row group) splits -> Reshuffle -> checked (ReadListingTables)

No structure of the snapshot's size is built in the driver or pickled into the graph: the
driver only lists the partition files and reads the listings file's footer. The listings are
the embed stage's reader's (``transforms/read_listing_tables.py``): the same rows kept as
``embeddings.snapshot_images``, and every rejected row is a dead letter with its reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import catalog as cat
from core import embeddings, snapshot, storage
from core.runs import METRICS_NAMESPACE
from index.source import IndexBuildError
from transforms.change_detection import buckets_for
from transforms.dead_letter_output import DEAD_LETTER_TAG
from transforms.read_catalog import LISTINGS
from transforms.read_listing_tables import ReadListingTables

# A current row: (listing_id, image_uri, image_index, category_pred, model_version, embedding)
Row = tuple[str, str, int, str | None, str, np.ndarray]
ImageKey = tuple[str, int]
ROWS = "rows"


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


def _snapshot_images(listings: pa.Table, catalog: str) -> Iterator[tuple[ImageKey, str]]:
    """Valid listings (``LISTING_TABLE``) -> ((listing_id, image_index), URI as rows name it),
    exactly as ``embeddings.snapshot_images`` names them (``catalog.catalog_name``)."""
    columns = (listings.column(n).to_pylist() for n in ("listing_id", "image_uris"))
    for lid, uris in zip(*columns, strict=True):
        for ix, uri in enumerate(uris):
            yield (lid, ix), cat.catalog_name(uri, catalog)


def listing_buckets(catalog: str, date: dt.date) -> int:
    """Hash buckets of the listings' duplicate check, from the Parquet footer's row count (a
    JSON Lines table is grouped by id, without buckets: 1)."""
    table = snapshot.find_table(catalog, date, LISTINGS)
    if table is None or table.fmt != "parquet":
        return 1
    snapshot.check_table(table)  # a damaged footer: CatalogError naming the file
    with storage.open_read(table.uri) as f:
        return buckets_for(pq.ParquetFile(f).metadata.num_rows)


class _CurrentRowFn(beam.DoFn):
    """The current row of one image: in the snapshot, newest with today's URI, else newest.

    Counts the snapshot's images that have a current row (``images_current``) and those with
    none yet (``images_not_embedded``: dead-lettered or not yet reached by embed).
    """

    def setup(self) -> None:
        counter = beam.metrics.Metrics.counter
        self._current = counter(METRICS_NAMESPACE, "images_current")
        self._not_embedded = counter(METRICS_NAMESPACE, "images_not_embedded")

    def process(self, element: tuple[ImageKey, dict[str, Iterable[Any]]]) -> Iterator[Row]:
        _, grouped = element
        uris, rows = list(grouped["snapshot"]), list(grouped["rows"])
        if uris and not rows:
            self._not_embedded.inc()
        elif uris:  # (no URI: removed from the catalog, its old rows leave the index)
            self._current.inc()
            newest_first = sorted(rows, key=lambda r: r[0], reverse=True)
            exact = [r for _, r in newest_first if r[1] == uris[0]]
            yield exact[0] if exact else newest_first[0][1]


class ReadCurrentEmbeddings(beam.PTransform):  # type: ignore[misc]
    """PBegin -> {ROWS: current rows of ``model_version`` for ``date``, LISTINGS: the snapshot's
    valid listings (``LISTING_TABLE`` tables), DEAD_LETTER_TAG: the listings rows it rejects}
    (see the module docstring).

    Raises CatalogError while the pipeline is being built when the snapshot is unusable as a
    whole (``ReadListingTables``).
    """

    def __init__(
        self,
        workdir: str,
        model_version: str,
        date: dt.date,
        catalog: str,
        allowed_buckets: Iterable[str] = (),
        stage: str = "build-index",
    ) -> None:
        super().__init__()
        self._workdir, self._version, self._date = workdir, model_version, date
        self._catalog, self._allowed, self._stage = catalog, tuple(allowed_buckets), stage

    def expand(self, pbegin: Any) -> dict[str, Any]:
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
        catalog = self._catalog
        listings = pbegin | "ReadListings" >> ReadListingTables(
            catalog,
            self._date,
            self._allowed,
            stage=self._stage,
            buckets=listing_buckets(catalog, self._date),
        )
        images = listings[LISTINGS] | "SnapshotImages" >> beam.FlatMap(_snapshot_images, catalog)
        current = (
            {"snapshot": images, "rows": rows}
            | "JoinSnapshot" >> beam.CoGroupByKey()
            | "CurrentRow" >> beam.ParDo(_CurrentRowFn())
        )
        return {
            ROWS: current,
            LISTINGS: listings[LISTINGS],
            DEAD_LETTER_TAG: listings[DEAD_LETTER_TAG],
        }
