"""Beam steps of build-index around the build's *view*: the current rows, computed once per build.

The view is written once, grouped by shard (``_view/shard-NNNNN.parquet`` under the build), and
every later step reads its own shard of it: adding vectors to a shard and the exact ground truth
of the validation queries over that shard. Besides the view, the first job draws a bounded,
deterministic sample (the rows with the smallest seeded hash of their key, ``Top`` combiner:
memory per worker = the sample size) and counts the rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from index import manifest, shard_files, source, training
from index.recall import KEY_SEP
from transforms.current_embeddings import Row, embeddings_matrix

VIEW_DIR = "_view"  # under the build directory; removed when the build ends
SAMPLE_FILE = "sample.npz"
COUNT_FILE = "count.json"
TRUTH_FILE = "truth.npz"
ENTRIES_DIR = "_entries"  # each worker's shard entry, read by the driver


def view_shard_uri(view_dir: str, shard_no: int) -> str:
    return storage.join(view_dir, f"shard-{shard_no:05d}.parquet")


def entry_uri(build_dir: str, shard_no: int) -> str:
    return storage.join(build_dir, ENTRIES_DIR, f"{shard_no:05d}.json")


def sample_priority(seed: int, row: Row) -> int:
    """A seeded, stable pseudo-random rank of a row: the sample is the ``n`` smallest."""
    key = f"{seed}|{row[0]}{KEY_SEP}{row[2]}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def rows_table(rows: Sequence[Row]) -> pa.Table:
    dim = len(rows[0][5])
    flat = np.concatenate([r[5] for r in rows]).astype(np.float32)
    return pa.table(
        {
            "listing_id": pa.array([r[0] for r in rows], pa.string()),
            "image_uri": pa.array([r[1] for r in rows], pa.string()),
            "image_index": pa.array([r[2] for r in rows], pa.int16()),
            "category_pred": pa.array([r[3] for r in rows], pa.string()),
            "model_version": pa.array([r[4] for r in rows], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat), dim),
        }
    )


class WriteViewShardFn(beam.DoFn):
    """All current rows of one shard -> checked (version, finite, unit norm) -> its view file."""

    def __init__(self, view_dir: str, model_version: str) -> None:
        self._view_dir, self._version = view_dir, model_version

    def process(self, element: tuple[int, Iterable[Row | None]]) -> Iterator[int]:
        shard_no, parts = element
        rows = [r for r in parts if r is not None]
        table = rows_table(rows) if rows else None
        if table is not None:
            for batch in table.to_batches(max_chunksize=65536):
                source.check_batch(batch, embeddings_matrix(batch), self._version)
        sink = pa.BufferOutputStream()
        if table is not None:
            pq.write_table(table, sink)
        storage.write_bytes(view_shard_uri(self._view_dir, shard_no), sink.getvalue().to_pybytes())
        yield len(rows)


def write_sample(rows: list[Row], view_dir: str) -> None:
    """The sampled rows (already in sample order) as vectors + row keys."""
    vectors = np.stack([r[5] for r in rows]).astype(np.float32) if rows else np.empty((0, 0))
    keys = np.array([f"{r[0]}{KEY_SEP}{r[2]}" for r in rows], dtype=str)
    buf = io.BytesIO()
    np.savez(buf, vectors=vectors, keys=keys)
    storage.write_bytes(storage.join(view_dir, SAMPLE_FILE), buf.getvalue())


def read_sample(view_dir: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(storage.join(view_dir, SAMPLE_FILE)))) as z:
        return z["vectors"], z["keys"].astype(object)


def read_view_shard(view_dir: str, shard_no: int) -> pa.Table | None:
    data = storage.read_bytes(view_shard_uri(view_dir, shard_no))
    return pq.read_table(pa.BufferReader(data)) if data else None


class AddViewShardFn(beam.DoFn):
    """One shard: its view file added to a copy of the trained index, written, entry handed back."""

    def __init__(self, trained: bytes, pca: bytes, build_dir: str, view_dir: str) -> None:
        self._trained_bytes, self._pca_bytes = trained, pca
        self._build_dir, self._view_dir = build_dir, view_dir

    def setup(self) -> None:
        self._trained = training.index_from_bytes(self._trained_bytes)
        self._pca = training.pca_from_bytes(self._pca_bytes)

    def process(self, shard_no: int) -> Iterator[manifest.ShardEntry]:
        table = read_view_shard(self._view_dir, shard_no)
        if table is not None and table.num_rows:
            index, ids = shard_files.fill_shard(self._trained, self._pca, table, shard_no)
        else:  # an empty shard is still written, so every shard the manifest lists exists
            index, ids = self._trained, shard_files.EMPTY_IDS
        entry = shard_files.write_shard(self._build_dir, shard_no, index, ids)
        # Hashed where it was written; the driver reads this small file instead of the shard.
        storage.write_text(entry_uri(self._build_dir, shard_no), json.dumps(entry.__dict__))
        yield entry


def collect_entries(build_dir: str, num_shards: int) -> list[manifest.ShardEntry]:
    """The shard entries the workers wrote, in shard order; removes them from the build."""
    out = []
    for s in range(num_shards):
        uri = entry_uri(build_dir, s)
        try:
            out.append(manifest.ShardEntry(**json.loads(storage.read_text(uri))))
        except (storage.StorageError, ValueError, TypeError) as e:
            raise source.IndexBuildError(
                f"shard {s} was not written completely ({uri}): {e}"
            ) from e
    remove_dir(storage.join(build_dir, ENTRIES_DIR))
    return out


def remove_dir(uri: str) -> None:
    """Delete a scratch folder of the build (locally the empty folder too)."""
    storage.delete_prefix(uri)
    if not storage.is_gcs(uri):
        shutil.rmtree(storage.normalize(uri), ignore_errors=True)


class ShardTruthFn(beam.DoFn):
    """Exact top-k of the validation queries over one shard's view (input space)."""

    def __init__(self, view_dir: str, queries: np.ndarray, k: int) -> None:
        self._view_dir, self._queries, self._k = view_dir, queries, k

    def process(self, shard_no: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        table = read_view_shard(self._view_dir, shard_no)
        if table is None or table.num_rows == 0:
            return
        v = embeddings_matrix(table)
        flat = faiss.IndexFlatIP(v.shape[1])
        flat.add(v)
        s, i = flat.search(self._queries, min(self._k, len(v)))
        lids = table.column("listing_id").to_pylist()
        ixs = table.column("image_index").to_pylist()
        keys = np.array([f"{lids[j]}{KEY_SEP}{ixs[j]}" for j in i.reshape(-1)], dtype=object)
        yield s, keys.reshape(i.shape)


class MergeTopK(beam.CombineFn):  # type: ignore[misc]
    """Per-shard top-k lists -> the global top-k (accumulator: one [nq, k] pair)."""

    def __init__(self, k: int) -> None:
        self._k = k

    def create_accumulator(self) -> Any:
        return None

    def add_input(self, acc: Any, part: tuple[np.ndarray, np.ndarray]) -> Any:
        if acc is None:
            return part
        s = np.concatenate([acc[0], part[0]], axis=1)
        keys = np.concatenate([acc[1], part[1]], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, : self._k]
        return np.take_along_axis(s, order, axis=1), np.take_along_axis(keys, order, axis=1)

    def merge_accumulators(self, accs: Iterable[Any]) -> Any:
        out = None
        for a in accs:
            if a is not None:
                out = self.add_input(out, a)
        return out

    def extract_output(self, acc: Any) -> Any:
        return acc
