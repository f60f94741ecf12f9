"""Where a build's passes over the database run: adding the vectors to the shards, and the exact
top-k of the validation queries (their ground truth).

The driver (index/builder.py) holds only bounded things, the training sample, the queries and
their answers; these two passes touch every vector. ``InProcess`` streams the input through this
process (tests, benchmarks, small catalogs); the Beam job (pipelines/build_index_job.py) runs
them per shard on workers. Both hand back the same things: a manifest entry per shard, written
where the bytes were, and each query's exact top-k row keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np
import pyarrow as pa

from index import manifest as manifest_mod
from index import shard_plan, training
from index.recall import exact_topk, row_keys
from index.shard_files import EMPTY_IDS, add_rows, id_table, write_shard
from index.source import BatchesFactory, iter_database


class ShardWork(Protocol):
    def add_shards(
        self, trained_bytes: bytes, pca_bytes: bytes, build_dir: str, num_shards: int
    ) -> list[manifest_mod.ShardEntry]:
        """Copies of the trained index (serialised) filled with each shard's vectors (through the
        PCA, serialised, b"" for none), written to ``build_dir``; one entry per shard."""
        ...

    def ground_truth(self, queries: np.ndarray, k: int) -> np.ndarray:
        """[len(queries), k] row keys of the exact top-k over the database, input space ("" past
        the end of a database with fewer than k rows)."""
        ...


@dataclass(frozen=True)
class InProcess:
    """Both passes streamed through this process, one batch at a time.

    Memory: the shards' indexes and id maps, plus one batch (no grouping copy of the vectors).
    ``one_per_pass`` (on-disk builds, larger than RAM) fills and writes one shard per pass over
    the input instead, so memory holds one shard, at the cost of S reads of the input. Rows are
    added in input order (the Beam job sorts each shard instead; both are deterministic for a
    given input).
    """

    batches_factory: BatchesFactory
    one_per_pass: bool = False

    def add_shards(
        self, trained_bytes: bytes, pca_bytes: bytes, build_dir: str, num_shards: int
    ) -> list[manifest_mod.ShardEntry]:
        trained = training.index_from_bytes(trained_bytes)
        pca = training.pca_from_bytes(pca_bytes)
        all_shards = list(range(num_shards))
        groups = [[s] for s in all_shards] if self.one_per_pass else [all_shards]
        entries = []
        for group in groups:
            indexes = {s: faiss.clone_index(trained) for s in group}
            ids: dict[int, list[pa.Table]] = {s: [] for s in group}
            for batch, vectors in iter_database(self.batches_factory):
                if num_shards == 1:
                    parts = [(0, batch, vectors)]
                else:
                    shard = shard_plan.shards_of(batch.column("listing_id").to_pylist(), num_shards)
                    parts = [
                        (int(s), batch.filter(pa.array(shard == s)), vectors[shard == s])
                        for s in np.unique(shard)
                        if int(s) in indexes
                    ]
                for s, rows, v in parts:
                    add_rows(indexes[s], training.apply_pca(pca, v), s)
                    ids[s].append(id_table(rows))
            for s in group:
                table = pa.concat_tables(ids.pop(s)) if ids[s] else EMPTY_IDS
                entries.append(write_shard(build_dir, s, indexes.pop(s), table))
        return entries

    def ground_truth(self, queries: np.ndarray, k: int) -> np.ndarray:
        """One streaming pass: each batch's scores merged into a running top-k."""
        chunks = (
            (v, row_keys(b.column("listing_id").to_pylist(), b.column("image_index").to_pylist()))
            for b, v in iter_database(self.batches_factory)
        )
        return exact_topk(queries, chunks, k).keys
