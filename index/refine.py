"""Refined IVF layouts (``IVF{n},PQ{m}x4fs,RFlat``): compressed codes find candidates, the
stored vectors re-rank them exactly.

A shard is a faiss ``IndexRefineFlat``: an IVF fast-scan PQ index (4-bit codes scanned with SIMD)
plus the shard's full vectors. Its IVF part stores shard-tagged ids like every IVF shard
(shard_plan.tag_ids), so the searcher treats it as one more IVF index: shards share the one
trained coarse quantizer and merge list by list into one index at load, and a query costs the
same over 8 shards as over 1. The merged index numbers its vectors by position in one store of
every shard's vectors (shard_plan.positions), so faiss' own ``IndexRefine`` re-ranks in C++
(``searchable``): ``k * k_factor`` candidates from the IVF part, scored exactly against the
stored vectors, the best ``k`` kept. Shards searched apart (``merge_ivf=False``) and the
filtered exact search re-rank here instead (``rerank``, faiss ``compute_distance_subset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index.shard_plan import first_rows, positions, tag_ids

# Candidates fetched per wanted hit. 4-bit PQ keeps the neighbourhood only roughly: 8x was the
# smallest factor that reached 0.95 on the manifold set (4x plateaued at 0.946, measured at
# 200k). A build tunes nprobe for each factor and keeps the fastest (tuning.tune): more
# candidates re-ranked, fewer lists probed; a trial keeps the first that reaches the target.
K_FACTORS = (8, 12, 16)


def is_refine(index: Any) -> bool:
    return isinstance(index, faiss.IndexRefine)


def base_ivf(index: Any) -> Any:
    """The IVF part of a refined index (what the searcher merges and probes)."""
    return faiss.downcast_index(index.base_index)


def store(index: Any) -> Any:
    """The refine store: a faiss IndexFlat of the shard's vectors in row order."""
    return faiss.downcast_index(index.refine_index)


def add_rows(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Append to both parts: tagged ids in the IVF part, row order in the refine store."""
    base_ivf(index).add_with_ids(vectors, ids)
    index.refine_index.add(vectors)
    index.ntotal = index.refine_index.ntotal


@dataclass
class Stores:
    """The refine stores a searcher re-ranks against: one IndexFlat per shard (``offsets`` None),
    or all shards' vectors concatenated into one (row r of shard s at ``offsets[s] + r``)."""

    flats: list[Any]
    offsets: np.ndarray | None = None

    @classmethod
    def concatenated(cls, flats: list[Any]) -> Stores:
        """One in-memory store of every shard's vectors: one faiss call re-ranks a batch, where
        per-shard stores need one call per shard over every candidate slot (measured at 200k
        manifold, 8 shards: 72 ms vs 25 ms a 1000-query batch)."""
        d = int(flats[0].d)
        merged = faiss.IndexFlat(d, flats[0].metric_type)
        for flat in flats:
            n = int(flat.ntotal)
            for start in range(0, n, 65536):  # bounded copies out of the (mapped) shard
                end = min(n, start + 65536)
                merged.add(flat.reconstruct_n(start, end - start))
        return cls([merged], first_rows([int(f.ntotal) for f in flats]))


# faiss' fast-scan IVF search groups a batch's queries list by list (its default for 32-code
# blocks), which pays from a few queries up; one query alone runs faster through its plain
# per-query loop (implem 10). Measured at 1M manifold vectors, 2 cores, us per query: 671 vs 727
# alone, equal at 4 to 8 queries, 371 vs 324 at 16 (and batches of 1000 ~40% slower).
SINGLE_QUERY_IMPLEM = 10


def single_query_view(ivf: Any) -> Any:
    """The same fast-scan IVF index, its lists shared (not copied), searched with faiss'
    per-query loop: for one query at a time. Other indexes are returned as they are."""
    if not isinstance(ivf, faiss.IndexIVFFastScan):
        return ivf
    view: Any = faiss.clone_index(ivf)
    view.replace_invlists(ivf.invlists, False)  # the clone's copy goes; ``ivf`` owns the lists
    view.implem = SINGLE_QUERY_IMPLEM
    return view


def searchable(ivf: Any, flat: Any) -> Any:
    """faiss' own IndexRefine over an IVF part whose ids are rows of ``flat``: the re-ranking
    runs in C++ in the search call. Measured at 1M manifold vectors, one query, 80 candidates:
    ~130 us less than re-ranking in Python after the scan (``rerank``), ~15% of the query."""
    index = faiss.IndexRefine(ivf, flat)
    index.own_fields = False  # the searcher owns both parts (faiss' wrapper references them)
    return index


def merged_by_encoding(
    ivfs: list[Any], stores: list[Any], offsets: np.ndarray | None = None
) -> Any:
    """Refined shards' IVF parts merged into one index by encoding their stored vectors again.

    For fast-scan blocks faiss cannot repack (other than 32 codes; ivf_lists.merged_fast_scan):
    every shard holds the vectors its codes were made from, and the shards share one trained
    quantizer and PQ, so adding row r of shard s again, under its tagged id, gives the same list
    and the same code it has in the shard. Ids are shard-tagged, or with ``offsets``
    (shard_plan.first_rows) positions in all shards' rows laid end to end.
    """
    merged: Any = faiss.clone_index(ivfs[0])  # quantizer, PQ, parameters
    merged.reset()
    for no, flat in enumerate(stores):
        n = int(flat.ntotal)
        for start in range(0, n, 65536):  # bounded copies out of the (mapped) store
            count = min(65536, n - start)
            ids = tag_ids(no, start, count)
            if offsets is not None:
                ids = positions(ids, offsets)
            merged.add_with_ids(flat.reconstruct_n(start, count), ids)
    return merged


def rerank(
    x: np.ndarray,
    shard_no: np.ndarray,
    rows: np.ndarray,
    stores: Stores,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact inner products of the candidates (shard, row), best ``k`` per query first.

    faiss scores the candidates in C++ (``IndexFlat.compute_distance_subset``; slots of other
    shards, or missing, are -1 there and score -inf), so nothing is gathered in Python. Returns
    (scores, shard numbers, rows), each [n, min(k, candidates)]; missing ones have shard/row -1.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c = rows.shape
    valid = shard_no >= 0
    if len(stores.flats) == 1:  # one shard, or every shard's vectors concatenated: one call
        at = rows if stores.offsets is None else stores.offsets[np.maximum(shard_no, 0)] + rows
        jobs = [(stores.flats[0], np.where(valid, at, -1))]
    else:
        jobs = [
            (stores.flats[int(s)], np.where(shard_no == s, rows, -1))
            for s in np.unique(shard_no[valid])
        ]
    scores = np.full((n, c), -np.inf, dtype=np.float32)
    part = scores if len(jobs) == 1 else np.empty((n, c), dtype=np.float32)
    for flat, lab in jobs:
        lab = np.ascontiguousarray(lab, dtype=np.int64)
        flat.compute_distance_subset(
            n, faiss.swig_ptr(x), c, faiss.swig_ptr(part), faiss.swig_ptr(lab)
        )
        if part is not scores:
            np.maximum(scores, part, out=scores)  # -inf where this store has no candidate
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    at_q = np.arange(n)[:, None]
    keep = valid[at_q, order]
    return (
        scores[at_q, order],
        np.where(keep, shard_no[at_q, order], -1),
        np.where(keep, rows[at_q, order], -1),
    )
