"""How good is an index: recall@10 against exact inner-product search, and single-query latency.

Ground truth streams over the database in chunks (never all vectors in memory): each chunk's
scores against the queries are merged into a running top-k, the ``faiss.contrib`` way. Results are
compared by row key (``listing_id#image_index``), which is what a shopper would see.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np

KEY_SEP = "#"


@dataclass(frozen=True)
class GroundTruth:
    scores: np.ndarray  # [nq, k] float32, descending
    keys: np.ndarray  # [nq, k] object (str), "" where the database has fewer than k rows


def row_keys(listing_ids: Iterable[str], image_indexes: Iterable[int]) -> np.ndarray:
    return np.array(
        [f"{lid}{KEY_SEP}{int(ix)}" for lid, ix in zip(listing_ids, image_indexes, strict=True)],
        dtype=object,
    )


def exact_topk(
    queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int = 10
) -> GroundTruth:
    """Exact top-k by inner product over ``chunks`` of (vectors [m, d], keys [m])."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    nq = q.shape[0]
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_k = np.full((nq, k), "", dtype=object)
    for vectors, keys in chunks:
        if len(keys) == 0:
            continue
        kk = min(k, len(keys))
        # faiss' exhaustive kNN is multi-threaded BLAS; a flat index over the chunk does it.
        flat = faiss.IndexFlatIP(q.shape[1])
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        s, i = flat.search(q, kk)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_k = np.concatenate([best_k, np.asarray(keys, dtype=object)[i]], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_k = np.take_along_axis(cand_k, order, axis=1)
    return GroundTruth(best_s, best_k)


def recall_at_k(
    found: np.ndarray, truth: np.ndarray, k: int = 10, exclude: np.ndarray | None = None
) -> float:
    """Mean fraction of each query's true top-k keys that ``found``'s top-k contains.

    ``exclude[i]`` (a key, or "") is dropped from both lists first: a database vector used as a
    query must not count finding itself (leave-one-out), so fetch k+1 for those.
    """
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows for {truth.shape[0]} queries")
    if truth.shape[0] == 0:
        raise ValueError("recall of zero queries is undefined")
    total = 0.0
    for i, (f, t) in enumerate(zip(found, truth, strict=True)):
        skip = exclude[i] if exclude is not None else ""
        want = [x for x in t if x and x != skip][:k]
        got = [x for x in f if x != skip][:k]
        total += len(set(want).intersection(got)) / len(want) if want else 1.0
    return total / truth.shape[0]


@dataclass(frozen=True)
class QuerySet:
    """Validation queries of one kind, with exact answers.

    ``exclude`` holds each query's own key for database vectors used as queries ("" for
    queries from outside the database, e.g. review photos); ``truth`` has k+1 columns so that
    dropping the query itself still leaves k.
    """

    name: str
    vectors: np.ndarray
    exclude: np.ndarray
    truth: np.ndarray

    def recall(self, search_keys: Callable[[np.ndarray, int], np.ndarray], k: int = 10) -> float:
        return recall_at_k(search_keys(self.vectors, k + 1), self.truth, k, self.exclude)

    def __len__(self) -> int:
        return len(self.vectors)


def latency_ms(
    search_one: Callable[[np.ndarray], object], queries: np.ndarray, warmup: int = 5
) -> tuple[float, float]:
    """p50 and p99 milliseconds of single queries, one faiss thread (what one request costs)."""
    if queries.shape[0] == 0:
        raise ValueError("latency of zero queries is undefined")
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for row in queries[:warmup]:
            search_one(row[None, :])
        times = []
        for row in queries:
            t = time.perf_counter()
            search_one(row[None, :])
            times.append((time.perf_counter() - t) * 1000.0)
    finally:
        faiss.omp_set_num_threads(prev)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))
