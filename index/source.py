"""The build's input: streams of embedding RecordBatches, checked, counted and sampled.

``batches_factory()`` returns a fresh iterator over the current embeddings each time it is called
(one call per pass), so no pass needs all vectors in memory. Rows with ``image_index < 0`` are
review photos: validation queries, never indexed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from index.recall import row_keys

BatchesFactory = Callable[[], Iterable[pa.RecordBatch]]
NORM_TOLERANCE = 1e-2


class IndexBuildError(ValueError):
    """The build cannot produce a publishable index (bad input, or validation failed)."""


@dataclass(frozen=True)
class Sample:
    train: np.ndarray  # [t, input_dim] database vectors for training
    queries: np.ndarray  # [q, input_dim] held-out database vectors (disjoint from train)
    query_keys: np.ndarray  # [q] their row keys (listing_id#image_index): leave-one-out
    review_queries: np.ndarray  # rows with image_index < 0 (review photos): queries, never indexed
    ntotal: int  # database rows (image_index >= 0)
    input_dim: int


def batch_vectors(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """The ``embedding`` column as a float32 [n, D] array."""
    col = batch.column("embedding")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if not pa.types.is_fixed_size_list(t):
        raise IndexBuildError(f"embedding column must be fixed_size_list<float32>, got {t}")
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(col), t.list_size), dtype=np.float32)


def check_batch(batch: pa.RecordBatch, vectors: np.ndarray, model_version: str | None) -> None:
    if model_version is not None and "model_version" in batch.schema.names:
        versions = set(batch.column("model_version").unique().to_pylist())
        if versions - {model_version}:
            raise IndexBuildError(
                f"embeddings of model versions {sorted(versions - {model_version})} in the input of "
                f"an index for {model_version}: versions never mix in one index"
            )
    if not np.isfinite(vectors).all():
        raise IndexBuildError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.nonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)[0]
    if len(bad):
        lid = batch.column("listing_id")[int(bad[0])].as_py()
        raise IndexBuildError(
            f"{len(bad)} embeddings are not L2-normalised (e.g. listing {lid}, norm "
            f"{norms[bad[0]]:.4f}); inner-product search needs unit vectors"
        )


class _Reservoir:
    """Uniform sample of fixed size over a stream: keep the rows with the smallest random keys."""

    def __init__(self, size: int, dim: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.priority = np.empty(0, dtype=np.float64)
        self.rows = np.empty((0, dim), dtype=np.float32)
        self.labels = np.empty(0, dtype=object)

    def add(self, rows: np.ndarray, labels: Callable[[np.ndarray], np.ndarray]) -> None:
        """Offer ``rows``; ``labels(positions)`` names the rows that are kept (computed lazily)."""
        if self.size == 0 or len(rows) == 0:
            return
        priority = self.rng.random(len(rows))
        if len(self.priority) >= self.size:  # only rows that beat the current worst can enter
            pos = np.nonzero(priority < self.priority.max())[0]
        else:
            pos = np.arange(len(rows))
        all_p = np.concatenate([self.priority, priority[pos]])
        all_rows = np.concatenate([self.rows, rows[pos]])
        all_labels = np.concatenate([self.labels, labels(pos)])
        if len(all_p) > self.size:
            keep = np.argpartition(all_p, self.size - 1)[: self.size]
            all_p, all_rows, all_labels = all_p[keep], all_rows[keep], all_labels[keep]
        self.priority, self.rows, self.labels = all_p, all_rows, all_labels

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.priority, kind="stable")
        return self.rows[order], self.labels[order]


def _labels(
    listing: pa.Array, image_index: np.ndarray, base: np.ndarray, pos: np.ndarray
) -> np.ndarray:
    rows = base[pos]
    return row_keys(listing.take(pa.array(rows)).to_pylist(), image_index[rows])


def scan(
    batches_factory: BatchesFactory,
    train_size: int,
    query_count: int,
    seed: int = 0,
    model_version: str | None = None,
) -> Sample:
    """One streaming pass: count, check, and sample (memory: the sample only).

    Keeps a uniform sample of ``train_size + query_count`` database rows; the first
    ``query_count`` (at most a fifth of the data) are held out as validation queries.
    """
    rng = np.random.default_rng(seed)
    db: _Reservoir | None = None
    reviews: _Reservoir | None = None
    n, dim = 0, 0
    for batch in batches_factory():
        if batch.num_rows == 0:
            continue
        vectors = batch_vectors(batch)
        if dim == 0:
            dim = vectors.shape[1]
            db = _Reservoir(train_size + query_count, dim, rng)
            reviews = _Reservoir(query_count, dim, rng)
        elif vectors.shape[1] != dim:
            raise IndexBuildError(
                f"embedding dim changed from {dim} to {vectors.shape[1]} mid-input"
            )
        check_batch(batch, vectors, model_version)
        image_index = np.asarray(batch.column("image_index").to_numpy(zero_copy_only=False))
        is_review = image_index < 0
        assert db is not None and reviews is not None
        db_pos = np.nonzero(~is_review)[0]
        listing = batch.column("listing_id")

        db.add(vectors[db_pos], functools.partial(_labels, listing, image_index, db_pos))
        reviews.add(vectors[is_review], lambda pos: np.full(len(pos), "", dtype=object))
        n += len(db_pos)
    if n == 0 or db is None or reviews is None:
        raise IndexBuildError("no embeddings to index (is the model published and embed run?)")
    rows, keys = db.sorted()
    # Hold out queries only when there is enough left to train on and to search.
    nq = min(query_count, max(1, n // 5))
    train = rows[nq:] if len(rows) > nq else rows
    return Sample(train, rows[:nq], keys[:nq], reviews.sorted()[0], n, dim)


def iter_database(
    batches_factory: BatchesFactory,
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """(batch, vectors) of database rows only (review photos are queries, never indexed)."""
    for batch in batches_factory():
        if batch.num_rows == 0:
            continue
        ix = np.asarray(batch.column("image_index").to_numpy(zero_copy_only=False))
        if (ix < 0).any():
            batch = batch.filter(pa.array(ix >= 0))
        yield batch, batch_vectors(batch)
