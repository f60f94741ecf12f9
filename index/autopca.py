"""Auto-PCA: the smallest reduction whose measured recall keeps the build's promise, or none.

Kept energy is not recall: real embeddings often carry most of their squared norm in a few shared
directions (a common mean, brightness, category) while the differences that rank neighbours live
in the small ones, so "keep 99% of the energy" can cut 256 dimensions to a handful and lose most
neighbours. The choice is therefore measured: for candidate dimensions (multiples of 16 that save
at least ``min_saving`` of the dimension), exact search in the reduced space is compared with exact
search on the *unreduced* vectors, over the training sample as the database and the tuning
queries, and the smallest dimension that keeps ``pca_target(target)`` is taken; none passes ->
no PCA.

PCA gets half of the recall the target allows to lose (0.975 for a 0.95 target): the index's own
approximate search needs the other half, and at full size neighbours are denser than in the
sample, which costs the reduced space a little more than the sample shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from index.training import PCA_DIM_MULTIPLE, normalize_rows

PCA_LOSS_SHARE = 0.5  # share of the allowed recall loss (1 - target) that PCA may spend
MAX_DATABASE = 100_000  # sample rows searched per candidate (exact search: cost ~ rows x dim)


@dataclass(frozen=True)
class PcaChoice:
    dim: int  # chosen output dim; == input dim means no PCA
    required: float  # recall@10 the reduction had to keep
    tried: tuple[tuple[int, float], ...]  # (dim, recall@10 vs unreduced exact search)

    def describe(self) -> str:
        tried = ", ".join(f"{d}: {r:.3f}" for d, r in self.tried) or "none (too few dims to cut)"
        return f"PCA dims tried (recall@10 of exact search vs unreduced, needed {self.required:.3f}): {tried}"


def pca_target(target_recall: float) -> float:
    return 1.0 - (1.0 - target_recall) * PCA_LOSS_SHARE


def candidate_dims(d_in: int, min_saving: float) -> list[int]:
    """Multiples of 16 that cut at least ``min_saving`` of ``d_in``, smallest first."""
    top = int(d_in * (1 - min_saving))
    return [d for d in range(PCA_DIM_MULTIPLE, top + 1, PCA_DIM_MULTIPLE)]


def _topk(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(database.shape[1])
    flat.add(np.ascontiguousarray(database, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def choose_pca_dim(
    sample: np.ndarray,
    queries: np.ndarray,
    target_recall: float,
    min_saving: float = 0.25,
    k: int = 10,
) -> PcaChoice:
    """The smallest candidate dim whose reduced exact search keeps ``pca_target`` recall@k.

    ``sample`` [n, d] database vectors (the training sample), ``queries`` [q, d] held out of it.
    Candidates are searched in order with a bisection (recall grows with the dimension), so a
    choice costs a handful of exact searches over at most MAX_DATABASE rows.
    """
    d_in = int(sample.shape[1])
    required = pca_target(target_recall)
    dims = candidate_dims(d_in, min_saving)
    if not dims or len(queries) == 0 or 2 * len(sample) < d_in:
        return PcaChoice(d_in, required, ())  # nothing worth cutting, or too little to measure
    db = np.ascontiguousarray(sample[:MAX_DATABASE], dtype=np.float64)
    truth = _topk(db.astype(np.float32), queries, k)
    # Uncentred PCA (as training.train_pca: mean zero by construction): eigenvectors of X^T X.
    eigval, eigvec = np.linalg.eigh(db.T @ db)
    axes = eigvec[:, np.argsort(eigval)[::-1]]
    q64 = np.asarray(queries, dtype=np.float64)
    tried: dict[int, float] = {}

    def recall_at(dim: int) -> float:
        if dim not in tried:
            p = axes[:, :dim]
            found = _topk(normalize_rows(db @ p), normalize_rows(q64 @ p), k)
            tried[dim] = _recall(found, truth)
        return tried[dim]

    lo, hi = 0, len(dims)  # answer: the first index in dims that passes (len(dims): none)
    while lo < hi:
        mid = (lo + hi) // 2
        if recall_at(dims[mid]) >= required:
            hi = mid
        else:
            lo = mid + 1
    chosen = dims[lo] if lo < len(dims) else d_in
    return PcaChoice(chosen, required, tuple(sorted(tried.items())))
