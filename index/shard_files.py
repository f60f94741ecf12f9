"""Filling and writing shards: shared by the in-process build and the Beam job.

Every shard starts as a copy of the one trained index (train once, add per shard). IVF shards
store shard-tagged faiss ids (see shard_plan.SHARD_ID_SHIFT); row i of ``shard-N.ids.parquet`` is
the vector with row number i of shard N.
"""

from __future__ import annotations

import hashlib

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import storage
from index import manifest as manifest_mod
from index import refine, shard_plan, training
from index.source import batch_vectors

ID_COLUMNS = ("listing_id", "image_uri", "image_index", "category_pred")


def add_rows(index: faiss.Index, vectors: np.ndarray, shard_no: int) -> None:
    """Append vectors to a shard; IVF shards get shard-tagged ids (row = id & (2**40 - 1))."""
    if refine.is_refine(index):
        tagged = shard_plan.tag_ids(shard_no, index.ntotal, len(vectors))
        refine.add_rows(index, vectors, tagged)
    elif isinstance(index, faiss.IndexIVF):
        index.add_with_ids(vectors, shard_plan.tag_ids(shard_no, index.ntotal, len(vectors)))
    else:
        index.add(vectors)


def fill_shard(
    trained: faiss.Index,
    pca: faiss.VectorTransform | None,
    table: pa.Table,
    shard_no: int = 0,
    chunk: int = 65536,
) -> tuple[faiss.Index, pa.Table]:
    """A copy of the trained index with ``table``'s vectors added; row i of the id map = id i.

    Rows are taken in (listing_id, image_index) order, so a shard's content does not depend on
    the order in which workers delivered its rows. Vectors are copied one chunk at a time.
    """
    order = pc.sort_indices(table, [("listing_id", "ascending"), ("image_index", "ascending")])
    index = faiss.clone_index(trained)
    for start in range(0, len(order), chunk):
        rows = table.select(["embedding"]).take(order[start : start + chunk])
        add_rows(index, training.apply_pca(pca, batch_vectors(rows)), shard_no)
    return index, id_table(table.take(order) if table.num_rows else table)


def id_table(rows: pa.Table | pa.RecordBatch) -> pa.Table:
    """The id-map columns of ``rows`` (category_pred null when the input has none)."""
    t = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
    ids = t.select([c for c in ID_COLUMNS if c in t.schema.names])
    if "category_pred" not in ids.schema.names:
        ids = ids.append_column("category_pred", pa.nulls(ids.num_rows, pa.string()))
    return ids


def write_shard(
    build_dir: str, shard_no: int, index: faiss.Index, ids: pa.Table
) -> manifest_mod.ShardEntry:
    """Write ``shard-N.faiss`` and ``shard-N.ids.parquet`` atomically; each sha256 is of the
    bytes as written (hashed on the way out, never re-read), so the worker that writes a shard
    returns its manifest entry."""
    name, ids_name = shard_plan.shard_file(shard_no), shard_plan.shard_ids_file(shard_no)
    h = hashlib.sha256()
    with storage.atomic_writer(storage.join(build_dir, name)) as f:

        def write(chunk: bytes) -> None:
            h.update(chunk)
            f.write(chunk)

        faiss.write_index(index, faiss.PyCallbackIOWriter(write))  # type: ignore[attr-defined]
    # The id map is small (~60 bytes a row): serialise in memory, hash, write those bytes.
    sink = pa.BufferOutputStream()
    pq.write_table(ids, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    storage.write_bytes(storage.join(build_dir, ids_name), data)
    return manifest_mod.ShardEntry(
        name, h.hexdigest(), int(index.ntotal), ids_name, hashlib.sha256(data).hexdigest()
    )


EMPTY_IDS = pa.schema(
    [
        ("listing_id", pa.string()),
        ("image_uri", pa.string()),
        ("image_index", pa.int16()),
        ("category_pred", pa.string()),
    ]
).empty_table()
