"""Search a loaded index (index/loaded_index.py): top-k images, grouped by listing.

The query goes through the build's PCA (if any); then one faiss index answers (one shard, the
shards merged, or faiss' IndexRefine over either), or, with shards kept apart, every shard is
searched on a thread pool (faiss releases the GIL) after one coarse assignment shared by all, and
the per-shard top lists are merged. Refined layouts searched apart fetch ``k * k_factor``
candidates that their stored vectors re-rank (index/refine.py). Hits are grouped by listing (the
best image per listing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from core import storage
from index import manifest as manifest_mod
from index import refine, shard_plan, training
from index.ivf_lists import search_preassigned
from index.loaded_index import LoadedIndex, Shard, current_manifest_uri
from index.recall import KEY_SEP
from index.shard_plan import ROW_MASK, SHARD_ID_SHIFT
from index.tuning import faiss_search_parameters, search_parameters

PARALLEL_QUERIES_MAX = 16  # up to this many queries, shards are searched on parallel threads
OVERFETCH = 5  # image hits fetched per wanted listing (a listing has up to 10 photos)


@dataclass(frozen=True)
class Hit:
    listing_id: str
    score: float  # inner product of L2-normalised vectors (cosine), higher is closer
    image_uri: str
    category: str | None
    image_index: int


class Searcher:
    """A loaded sharded index. Construct with :meth:`open` (CURRENT) or :meth:`from_manifest_uri`."""

    def __init__(
        self,
        manifest: manifest_mod.Manifest,
        build_dir: str,
        *,
        cache_dir: str | None = None,
        mmap: bool = True,
        merge_ivf: bool = True,
        threads: int | None = None,
        workdir: str | None = None,
    ) -> None:
        self.loaded = LoadedIndex(
            manifest, build_dir, cache_dir=cache_dir, mmap=mmap, merge_ivf=merge_ivf
        )
        self.manifest = manifest
        self.build_dir = self.loaded.build_dir
        self.workdir = workdir
        self.pca = self.loaded.pca
        # faiss releases the GIL; more threads than cores only adds switching.
        self._pool = ThreadPoolExecutor(
            max_workers=threads or max(1, min(len(self.loaded.shards), os.cpu_count() or 1))
        )
        self._param_cache: dict[tuple[tuple[str, int], ...], Any] = {}
        # The manifest's own setting, resolved once: a single query costs ~150 us at 1M vectors,
        # so a few us of per-call dict work is measurable.
        self._default_sp = self._params(manifest.search_params)

    @classmethod
    def open(cls, workdir: str, **kwargs: Any) -> Searcher:
        """The index that ``WORKDIR/indexes/CURRENT`` points at."""
        return cls.from_manifest_uri(current_manifest_uri(workdir), workdir=workdir, **kwargs)

    @classmethod
    def from_manifest_uri(
        cls, uri: str, *, require_validation: bool = True, **kwargs: Any
    ) -> Searcher:
        m = manifest_mod.read(uri)
        if require_validation:
            manifest_mod.require_validated(m, uri)
        return cls(m, storage.parent(uri), **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ searching

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Input-space embeddings -> the index's (PCA'd, re-normalised) space."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if v.shape[1] != self.manifest.input_dim:
            raise ValueError(
                f"query vectors have {v.shape[1]} dims, the index takes {self.manifest.input_dim}"
            )
        return training.apply_pca(self.pca, v)

    def _params(self, params: dict[str, int]) -> faiss.SearchParameters | None:
        """Per-call faiss parameters, built once per distinct setting (k_factor goes to faiss'
        IndexRefine when it re-ranks, and is ours when shards are searched apart)."""
        key = tuple(sorted(params.items()))
        if key not in self._param_cache:
            knobs = {n: v for n, v in params.items() if n != "k_factor"}
            if self.loaded.refine_index is None:
                self._param_cache[key] = search_parameters(knobs)
            else:
                knobs["k_factor"] = self._k_factor(params)
                self._param_cache[key] = faiss_search_parameters(knobs)
        return self._param_cache[key]

    def _k_factor(self, params: dict[str, int]) -> int:
        """Candidates per wanted hit of a refined layout: the call's, else the build's."""
        k_factor = params.get("k_factor", self.manifest.search_params.get("k_factor"))
        return int(k_factor or refine.K_FACTORS[0])

    def search_raw(
        self, vectors: np.ndarray, k: int, params: dict[str, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k image hits over all shards: (scores, shard numbers, faiss ids), each [n, k].

        Missing hits (fewer than k vectors) have shard -1 and score -inf. ``params`` overrides
        the manifest's search_params (tuning uses it).
        """
        x = self.project(vectors)
        p = self.manifest.search_params if params is None else params
        sp = self._default_sp if params is None else self._params(params)
        if self.loaded.refine_index is not None:  # faiss' IndexRefine: candidates and re-ranking
            index = self.loaded.refine_one if len(x) == 1 else self.loaded.refine_index
            return self._one_index(index, x, k, sp)
        if not self.loaded.refined:
            return self._candidates(x, k, sp)
        _, shard_no, rows = self._candidates(x, k * self._k_factor(p), sp)
        scores, shard_no, rows = refine.rerank(x, shard_no, rows, self.loaded.stores, k)
        if scores.shape[1] < k:  # fewer candidates than k: pad
            return self._top_k(scores, rows, shard_no, k)
        return scores, shard_no, rows

    def _one_index(
        self, index: Any, x: np.ndarray, k: int, sp: faiss.SearchParameters | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """search_raw when one faiss index answers everything (its results already merged and
        sorted): one shard, the shards merged, or faiss' IndexRefine over either.

        After a scan of ~100k codes the interpreter's own code and data are out of the CPU
        caches and each numpy call costs several us, so the common case takes one here.
        """
        kk = min(k, self.manifest.ntotal)
        if kk == 0:
            return self._top_k(
                np.empty((len(x), 0), np.float32),
                np.empty((len(x), 0), np.int64),
                np.empty((len(x), 0), np.int32),
                k,
            )
        d, i = index.search(x, kk, params=sp) if sp is not None else index.search(x, kk)
        # faiss puts missing hits (-1) last in each row: the last column tells.
        complete = kk == k and int(i[:, -1].min(initial=0)) >= 0
        if complete and len(self.loaded.shards) == 1:  # one shard: its ids are its rows
            return d, np.zeros(i.shape, np.int32), i
        shard, rows = shard_rows(self, None if self.loaded.merged is not None else 0, i)
        return (d, shard, rows) if complete else self._top_k(d, rows, shard, k)

    def _candidates(
        self, x: np.ndarray, k: int, sp: faiss.SearchParameters | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """search_raw on projected queries, without re-ranking."""
        if self.loaded.merged is not None or len(self.loaded.shards) == 1:
            index = (
                self.loaded.merged
                if self.loaded.merged is not None
                else self.loaded.shards[0].index
            )
            return self._one_index(index, x, k, sp)

        coarse: tuple[np.ndarray, np.ndarray] | None = None
        if self.loaded.quantizer is not None and sp is not None:
            # Separate IVF shards: one coarse assignment for all of them, not one per shard.
            coarse = self.loaded.quantizer.search(
                x,
                int(sp.nprobe),  # type: ignore[attr-defined]
                params=sp.quantizer_params,  # type: ignore[attr-defined]
            )

        def one(shard: Shard) -> tuple[np.ndarray, np.ndarray]:
            kk = min(k, shard.index.ntotal)
            if kk == 0:
                return (np.empty((len(x), 0), np.float32), np.empty((len(x), 0), np.int64))
            if coarse is not None:
                d, i = search_preassigned(shard.index, x, kk, coarse, sp)
                return d, np.where(i >= 0, i & ROW_MASK, -1)
            if sp is None:
                return shard.index.search(x, kk)  # type: ignore[no-any-return]
            d, i = shard.index.search(x, kk, params=sp)
            if isinstance(shard.index, faiss.IndexIVF):
                i = np.where(i >= 0, i & ROW_MASK, -1)
            return d, i

        if len(self.loaded.shards) == 1 or len(x) >= PARALLEL_QUERIES_MAX:
            # A batch is already spread over every core by faiss (OpenMP over queries); shard
            # threads on top would only oversubscribe them.
            results = [one(s) for s in self.loaded.shards]
        else:
            results = list(self._pool.map(one, self.loaded.shards))
        scores = np.concatenate([r[0] for r in results], axis=1)
        ids = np.concatenate([r[1] for r in results], axis=1)
        shard_no = np.concatenate(
            [np.full(r[1].shape, s, dtype=np.int32) for s, r in enumerate(results)], axis=1
        )
        return self._top_k(scores, ids, shard_no, k)

    @staticmethod
    def _top_k(
        scores: np.ndarray, ids: np.ndarray, shard_no: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merge candidate hits into the k best per query, padding with -1 / -inf."""
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
        shard_no = np.where(ids < 0, -1, np.take_along_axis(shard_no, order, axis=1))
        if scores.shape[1] < k:  # the whole index holds fewer than k vectors
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            shard_no = np.pad(shard_no, ((0, 0), (0, pad)), constant_values=-1)
        return scores, shard_no, ids

    def _rows(
        self, shard_no: np.ndarray, ids: np.ndarray, columns: Sequence[str]
    ) -> list[list[Any]]:
        """Column values for each (shard, id), in order (a single take per shard)."""
        out: list[list[Any]] = [[None] * len(columns) for _ in range(len(ids))]
        for s in np.unique(shard_no[shard_no >= 0]):
            pos = np.nonzero(shard_no == s)[0]
            taken = self.loaded.shards[int(s)].ids.take(pa.array(ids[pos])).select(list(columns))
            cols = [taken.column(c).to_pylist() for c in columns]
            for j, p in enumerate(pos):
                out[p] = [c[j] for c in cols]
        return out

    def keys(self, shard_no: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``listing_id#image_index`` of raw hits ("" for missing), shape of the inputs."""
        flat_s, flat_i = shard_no.reshape(-1), ids.reshape(-1)
        rows = self._rows(flat_s, flat_i, ("listing_id", "image_index"))
        keys = [f"{r[0]}{KEY_SEP}{r[1]}" if r[0] is not None else "" for r in rows]
        return np.array(keys, dtype=object).reshape(shard_no.shape)

    def search_keys(
        self, vectors: np.ndarray, k: int, params: dict[str, int] | None = None
    ) -> np.ndarray:
        _, s, i = self.search_raw(vectors, k, params)
        return self.keys(s, i)

    def search_vectors(self, vectors: np.ndarray, k: int = 20) -> list[list[Hit]]:
        """Top-k listings per query embedding (input space), best image per listing."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, shard_no, ids = self.search_raw(vectors, k * OVERFETCH)
        out: list[list[Hit]] = []
        cols = ("listing_id", "image_uri", "category_pred", "image_index")
        for q in range(scores.shape[0]):
            rows = self._rows(shard_no[q], ids[q], cols)
            hits: list[Hit] = []
            seen: set[str] = set()
            for score, row in zip(scores[q], rows, strict=True):
                if row[0] is None or row[0] in seen:
                    continue
                seen.add(row[0])
                hits.append(Hit(row[0], float(score), row[1], row[2], int(row[3])))
                if len(hits) == k:
                    break
            out.append(hits)
        return out


# ------------------------------------------------------------------ hook: filtered search
# Read-only views for vsearch/serve/filtered.py, which owns the filter logic (attribute
# masks, over-fetch, exact search over a filtered subset). Nothing above depends on these.


def id_maps(searcher: Searcher) -> list[pa.Table]:
    """Each shard's id map; row i is the vector with row number i of that shard."""
    return [s.ids for s in searcher.loaded.shards]


def faiss_indexes(searcher: Searcher) -> list[tuple[int | None, Any]]:
    """The faiss indexes that answer searches: (shard number, index); None = all shards merged.

    Their ids: ``index_ids`` / ``shard_rows`` below translate (shard-tagged for IVF shards,
    positions in one store for refined shards merged, row numbers otherwise).
    """
    if searcher.loaded.merged is not None:
        return [(None, searcher.loaded.merged)]
    return [(no, s.index) for no, s in enumerate(searcher.loaded.shards)]


def index_ids(searcher: Searcher, no: int | None, shard: int, rows: np.ndarray) -> np.ndarray:
    """The ids faiss index ``no`` of faiss_indexes holds for ``rows`` of shard ``shard``."""
    rows = np.asarray(rows, dtype=np.int64)
    index = searcher.loaded.merged if no is None else searcher.loaded.shards[no].index
    if no is None and searcher.loaded.positions is not None:  # refined shards merged: positions
        return searcher.loaded.positions[shard] + rows
    if isinstance(index, faiss.IndexIVF):
        return (np.int64(shard) << SHARD_ID_SHIFT) | rows
    return rows


def shard_rows(
    searcher: Searcher, no: int | None, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """faiss ids from index ``no`` of faiss_indexes -> (shard numbers int32, rows); -1 where
    an id is -1 (a missing hit)."""
    index = searcher.loaded.merged if no is None else searcher.loaded.shards[no].index
    if no is None and searcher.loaded.positions is not None:
        return shard_plan.shard_rows(ids, searcher.loaded.positions)
    if isinstance(index, faiss.IndexIVF):
        shard = np.where(ids >= 0, ids >> SHARD_ID_SHIFT, -1).astype(np.int32)
        return shard, np.where(ids >= 0, ids & ROW_MASK, -1)
    return np.where(ids >= 0, int(no or 0), -1).astype(np.int32), ids


def refine_stores(searcher: Searcher) -> refine.Stores | None:
    """The refine stores (index/refine.py) for a refined layout; None for other layouts.

    The IVF indexes above then score with 4-bit PQ codes: exact scores need a re-rank
    (index.refine.rerank) of ``k * refine.K_FACTORS[-1]`` candidates.
    """
    return searcher.loaded.stores if searcher.loaded.refined else None
