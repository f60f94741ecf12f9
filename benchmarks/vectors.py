"""DESIGN.md's benchmark vector sets, exactly, so figures compare across changes and with peers.

Each set is L2-normalised float32 of D=256 from numpy ``default_rng(seed)``. The set's fixed
parameters (the 2,000 centres; the 32x256 matrix A) always come from ``seed``; the points come
from ``point_seed`` (default: the same generator, right after the parameters). Queries are "the
same recipe with another seed": the same centres / A, points from another ``point_seed``, so
queries fall on the same clusters / manifold as the database. Points are drawn in float32 in
chunks of 65,536 rows (bounded memory at 1M; the chunking is part of the recipe).

* ``clustered`` (easy): c ~ N(0, I), 2,000 centres; x = c[k] + 0.6 * N(0, I), k uniform.
* ``manifold`` (hard): z ~ N(0, I_32), A ~ N(0, 1) of 32x256, x = tanh(z @ A / 4) + 0.05 * N(0, I).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

DIM = 256
N_CENTRES = 2000
LATENT = 32
CHUNK = 65536
DATABASE_SEED = 0
QUERY_SEED = 1


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _clustered_chunks(
    n: int, seed: int = DATABASE_SEED, point_seed: int | None = None, dim: int = DIM
) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CENTRES, dim), dtype=np.float32)
    prng = rng if point_seed is None else np.random.default_rng(point_seed)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        k = prng.integers(0, N_CENTRES, m)
        yield _normalise(centres[k] + 0.6 * prng.standard_normal((m, dim), dtype=np.float32))


def _manifold_chunks(
    n: int, seed: int = DATABASE_SEED, point_seed: int | None = None, dim: int = DIM
) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((LATENT, dim), dtype=np.float32)
    prng = rng if point_seed is None else np.random.default_rng(point_seed)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        z = prng.standard_normal((m, LATENT), dtype=np.float32)
        x = np.tanh(z @ a / 4) + 0.05 * prng.standard_normal((m, dim), dtype=np.float32)
        yield _normalise(x)


_CHUNKS = {"clustered": _clustered_chunks, "manifold": _manifold_chunks}


def _filled(out: np.ndarray, chunks: Iterator[np.ndarray]) -> np.ndarray:
    at = 0
    for c in chunks:
        out[at : at + len(c)] = c
        at += len(c)
    return out


def clustered(
    n: int, seed: int = DATABASE_SEED, point_seed: int | None = None, dim: int = DIM
) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    return _filled(out, _clustered_chunks(n, seed, point_seed, dim))


def manifold(
    n: int, seed: int = DATABASE_SEED, point_seed: int | None = None, dim: int = DIM
) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    return _filled(out, _manifold_chunks(n, seed, point_seed, dim))


SETS = {"clustered": clustered, "manifold": manifold}


def write_npy(name: str, n: int, path: str, seed: int = DATABASE_SEED) -> None:
    """The set's first ``n`` database vectors written straight into a .npy (rows identical to
    ``SETS[name](n, seed)``, without holding them in memory: 10M x 256 is 10 GB)."""
    tmp = path + ".tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, DIM))
    _filled(out, _CHUNKS[name](n, seed))
    out.flush()
    del out
    os.replace(tmp, path)


CATALOG_RUN = os.path.join("bench-output", "embed-100k")  # embed_bench's run: ~112k real photos


def catalog(run_dir: str, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) of real embeddings: the trained model's current rows for the newest
    day of ``run_dir`` (``catalog/`` + ``work/`` as ``benchmarks.embed_bench`` leaves them),
    shuffled with seed 0; the first ``nq`` are the queries, held out of the database."""
    import glob

    from core.embeddings import read_current_embeddings
    from index.source import batch_vectors

    days = sorted(glob.glob(os.path.join(run_dir, "catalog", "dt=*")))
    models = sorted(glob.glob(os.path.join(run_dir, "work", "embeddings", "model=*")))
    if not days or not models:
        raise SystemExit(f"{run_dir}: no catalog days or embeddings: run benchmarks.embed_bench")
    date = os.path.basename(days[-1]).removeprefix("dt=")
    model = os.path.basename(models[-1]).removeprefix("model=")
    parts = [
        batch_vectors(b)
        for b in read_current_embeddings(
            os.path.join(run_dir, "catalog"), os.path.join(run_dir, "work"), date, model
        )
    ]
    x = _normalise(np.concatenate(parts))[
        np.random.default_rng(0).permutation(sum(map(len, parts)))
    ]
    return np.ascontiguousarray(x[nq:]), np.ascontiguousarray(x[:nq])


def database_and_queries(name: str, n: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """(database [n, D], queries [nq, D]) of a named set: same parameters, other point seed."""
    make = SETS[name]
    return make(n, DATABASE_SEED), make(nq, DATABASE_SEED, point_seed=QUERY_SEED)
