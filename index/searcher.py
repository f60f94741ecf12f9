"""Search a published (or freshly built) sharded index: load once, verify, search in parallel.

Loading: every file (shards, id maps, pca.bin) is checked against the manifest's sha256 before
it is parsed (index/checksums.py); local shards are memory-mapped in place, gs:// shards from a
verified local cache.

Searching: the query goes through the build's PCA (if any), then every shard is searched on a
thread pool (faiss releases the GIL), the per-shard top lists are merged, and hits are grouped by
listing (best image per listing). IVF shards, which share one trained quantizer, are by default
stacked at load into one in-memory index instead (same answers, one coarse assignment, no
per-shard cost: S shards search as fast as one); ``merge_ivf=False`` keeps them memory-mapped
and searched one by one. An ``--on-disk`` build (manifest format 3) is served from its merged
index, whose lists file is memory-mapped (index/ondisk.py). Refined layouts (index/refine.py)
are searched through their IVF part the same way, for ``k * k_factor`` candidates, which their
stored vectors then re-rank: in faiss' own IndexRefine when one index answers (one shard, or
shards merged), here when shards are searched apart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from core import paths, pointers, storage
from index import manifest as manifest_mod
from index import ondisk, refine, shard_plan, training
from index.checksums import (
    ShardError,
    default_cache_dir,
    local_file,
    local_shard,
    read_id_map,
    verified_bytes,
)
from index.ivf_lists import ids_tagged, merged_fast_scan, search_preassigned
from index.recall import KEY_SEP
from index.shard_plan import ROW_MASK, SHARD_ID_SHIFT
from index.tuning import faiss_search_parameters, search_parameters

PARALLEL_QUERIES_MAX = 16  # up to this many queries, shards are searched on parallel threads
OVERFETCH = 5  # image hits fetched per wanted listing (a listing has up to 10 photos)
__all__ = ["Hit", "Searcher", "ShardError", "default_cache_dir"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    listing_id: str
    score: float  # inner product of L2-normalised vectors (cosine), higher is closer
    image_uri: str
    category: str | None
    image_index: int


@dataclass
class _Shard:
    index: Any  # a faiss index (faiss' type stubs do not know its subclasses' members)
    ids: pa.Table  # listing_id, image_uri, image_index, category_pred; row i = faiss id i


class Searcher:
    """A loaded sharded index. Construct with :meth:`open` (CURRENT) or :meth:`from_manifest`."""

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
        manifest.check()
        self.manifest = manifest
        self.build_dir = storage.normalize(build_dir)
        self.workdir = workdir
        self._cache_dir = cache_dir or default_cache_dir()
        self._mmap = mmap
        self.pca = self._load_pca()
        self._shard_paths: list[str] = []
        self._refined: list[Any] = []  # refined shards (each owns its IVF part and vectors)
        # With refined shards searched as one index: faiss' IndexRefine over it, whose ids are
        # positions in one store of every shard's vectors (first rows in _positions).
        self._refine_index: Any = None
        self._refine_one: Any = None  # the same, for one query at a time (refine.single_query_view)
        self._positions: np.ndarray | None = None
        if manifest.merged is not None:  # on-disk build: one index, its lists memory-mapped
            self._shards = [_Shard(None, read_id_map(build_dir, e)) for e in manifest.shards]
            self._stores = refine.Stores([])
            self._quantizer = None
            self._merged = self._open_merged(manifest.merged)
        else:
            self._shards = [self._load_shard(e) for e in manifest.shards]
            self._stores = refine.Stores([refine.store(r) for r in self._refined])
            self._quantizer = self._shared_quantizer()
            # Refined shards merged: their ids become positions in one store of every shard's
            # vectors (row r of shard s at offsets[s] + r), what faiss' IndexRefine looks up.
            offsets = shard_plan.first_rows([int(r.ntotal) for r in self._refined])
            self._merged = self._merged_ivf(merge_ivf, offsets if self._refined else None)
            if self._merged is not None:
                self._quantizer = self._merged.quantizer
                if len(self._refined) > 1:  # merged lists: the vectors in one store too
                    self._stores = refine.Stores.concatenated(self._stores.flats)
            if self._refined and (self._merged is not None or len(self._shards) == 1):
                answering = self._merged if self._merged is not None else self._shards[0].index
                self._positions = offsets
                self._refine_index = refine.searchable(answering, self._stores.flats[0])
                self._refine_one = refine.searchable(
                    refine.single_query_view(answering), self._stores.flats[0]
                )
        # faiss releases the GIL; more threads than cores only adds switching.
        self._pool = ThreadPoolExecutor(
            max_workers=threads or max(1, min(len(self._shards), os.cpu_count() or 1))
        )
        self._param_cache: dict[tuple[tuple[str, int], ...], Any] = {}
        # The manifest's own setting, resolved once: a single query costs ~150 us at 1M vectors,
        # so a few us of per-call dict work is measurable.
        self._default_sp = self._params(manifest.search_params)

    # ------------------------------------------------------------------ construction

    @classmethod
    def open(cls, workdir: str, **kwargs: Any) -> Searcher:
        """The index that ``WORKDIR/indexes/CURRENT`` points at."""
        pointer = pointers.read_pointer(paths.current_index_pointer(workdir))
        if not pointer.value:
            raise FileNotFoundError(
                f"no published index: {paths.current_index_pointer(workdir)} does not exist "
                "(run vsearch build-index, then vsearch publish)"
            )
        return cls.from_manifest_uri(pointer.value, workdir=workdir, **kwargs)

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

    # ------------------------------------------------------------------ loading

    def _load_pca(self) -> faiss.VectorTransform | None:
        """The build's PCA; None when the index keeps the input dimension (no pca.bin)."""
        uri = storage.join(self.build_dir, shard_plan.PCA_FILE)
        if self.manifest.dim == self.manifest.input_dim and not storage.exists(uri):
            return None
        data = verified_bytes(uri, self.manifest.pca_sha256, "PCA")
        pca = training.pca_from_bytes(data, source=uri)
        shape = (pca.d_in, pca.d_out) if pca is not None else None
        if shape != (self.manifest.input_dim, self.manifest.dim):
            raise ShardError(
                f"{uri} maps {shape} dims, the manifest says "
                f"{self.manifest.input_dim}->{self.manifest.dim}"
            )
        return pca

    def _load_shard(self, entry: manifest_mod.ShardEntry) -> _Shard:
        key = (self.manifest.model_version, self.manifest.build_id)
        path = local_shard(self.build_dir, entry, self._cache_dir, key)
        self._shard_paths.append(path)
        flags = faiss.IO_FLAG_READ_ONLY
        if self._mmap:
            flags |= getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
        try:
            index = faiss.read_index(path, flags)
        except RuntimeError as e:
            raise ShardError(f"faiss cannot read index shard {path}: {e}") from e
        if index.ntotal != entry.ntotal or index.d != self.manifest.dim:
            raise ShardError(
                f"index shard {path} holds {index.ntotal} vectors of dim {index.d}; the manifest "
                f"says {entry.ntotal} of dim {self.manifest.dim}"
            )
        if refine.is_refine(index):  # searched through its IVF part, re-ranked here
            self._refined.append(index)
            index = refine.base_ivf(index)
        return _Shard(index, read_id_map(self.build_dir, entry))

    def _open_merged(self, entry: manifest_mod.MergedEntry) -> Any:
        """The on-disk merged index (index/ondisk.py), both files verified first."""
        key = (self.manifest.model_version, self.manifest.build_id)
        index_path = local_file(
            self.build_dir, entry.index_path, entry.index_sha256, self._cache_dir, key, "index"
        )
        local_file(
            self.build_dir, entry.lists_path, entry.lists_sha256, self._cache_dir, key, "lists"
        )
        try:
            index = ondisk.open_merged(index_path)
        except RuntimeError as e:
            raise ShardError(f"faiss cannot read merged index {index_path}: {e}") from e
        if index.ntotal != self.manifest.ntotal or index.d != self.manifest.dim:
            raise ShardError(
                f"merged index {index_path} holds {index.ntotal} vectors of dim {index.d}; the "
                f"manifest says {self.manifest.ntotal} of dim {self.manifest.dim}"
            )
        self._shard_paths.append(index_path)
        return index

    def _shared_quantizer(self) -> Any:
        """The coarse quantizer all IVF shards share (copies of one trained index), or None."""
        if len(self._shards) < 2 or not all(
            isinstance(s.index, faiss.IndexIVF) for s in self._shards
        ):
            return None
        first = self._shards[0].index.quantizer
        centroids = first.reconstruct_n(0, first.ntotal)
        for no, shard in enumerate(self._shards):
            q = shard.index.quantizer
            if q.ntotal != first.ntotal or not np.array_equal(
                q.reconstruct_n(0, q.ntotal), centroids
            ):
                return None  # not trained together: search each shard on its own
            if not ids_tagged(shard.index, no):
                return None
        return first

    def _merged_ivf(self, merge: bool, offsets: np.ndarray | None) -> Any:
        """IVF shards copied into one in-memory index (the searcher's working copy).

        IVF shards are copies of one trained index whose ids carry their shard number, so their
        inverted lists concatenate list by list into one index that answers exactly what
        searching every shard and merging would, at the cost of one shard: one coarse
        assignment and no per-shard overhead. The price is RAM for all codes instead of memory
        maps (``merge_ivf=False`` keeps per-shard, memory-mapped search).
        """
        if self._quantizer is None or not merge:
            return None
        if isinstance(self._shards[0].index, faiss.IndexIVFFastScan):
            ivfs = [s.index for s in self._shards]
            if int(ivfs[0].bbs) == 32:  # blocks of 32 codes: repacked list by list
                packed = merged_fast_scan(ivfs, offsets)
            elif len(self._refined) == len(ivfs):  # faiss cannot repack: encode the vectors again
                packed = refine.merged_by_encoding(ivfs, self._stores.flats, offsets)
            else:
                _log.warning(
                    "%s: fast-scan blocks faiss cannot repack: shards searched apart",
                    self.build_dir,
                )
                return None
            for shard in self._shards:
                shard.index = None
            return packed
        merged: Any = faiss.clone_index(self._shards[0].index)  # quantizer, type, parameters
        base = self._shards[0].index
        target = faiss.ArrayInvertedLists(base.nlist, base.code_size)
        merged.replace_invlists(target, True)  # fresh owned lists (shard 0's may be mmap views)
        target.this.disown()  # type: ignore[attr-defined]  # the index frees it
        for shard in self._shards:
            src = shard.index.invlists
            for lst in range(src.nlist):
                n = src.list_size(lst)
                if n:
                    ids, codes = src.get_ids(lst), src.get_codes(lst)
                    if offsets is None:
                        target.add_entries(lst, n, ids, codes)
                    else:
                        pos = shard_plan.positions(faiss.rev_swig_ptr(ids, n), offsets)
                        target.add_entries(lst, n, faiss.swig_ptr(pos), codes)
                    src.release_ids(lst, ids)
                    src.release_codes(lst, codes)
        merged.ntotal = sum(s.index.ntotal for s in self._shards)
        for shard in self._shards:
            shard.index = None  # the merged copy answers; drop the maps
        return merged

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
            if self._refine_index is None:
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
        if self._refine_index is not None:  # faiss' IndexRefine: candidates and re-ranking
            index = self._refine_one if len(x) == 1 else self._refine_index
            return self._one_index(index, x, k, sp)
        if not self._refined:
            return self._candidates(x, k, sp)
        _, shard_no, rows = self._candidates(x, k * self._k_factor(p), sp)
        scores, shard_no, rows = refine.rerank(x, shard_no, rows, self._stores, k)
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
        if complete and len(self._shards) == 1:  # one shard: its ids are its rows
            return d, np.zeros(i.shape, np.int32), i
        shard, rows = shard_rows(self, None if self._merged is not None else 0, i)
        return (d, shard, rows) if complete else self._top_k(d, rows, shard, k)

    def _candidates(
        self, x: np.ndarray, k: int, sp: faiss.SearchParameters | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """search_raw on projected queries, without re-ranking."""
        if self._merged is not None or len(self._shards) == 1:
            index = self._merged if self._merged is not None else self._shards[0].index
            return self._one_index(index, x, k, sp)

        coarse: tuple[np.ndarray, np.ndarray] | None = None
        if self._quantizer is not None and sp is not None:
            # Separate IVF shards: one coarse assignment for all of them, not one per shard.
            coarse = self._quantizer.search(
                x,
                int(sp.nprobe),  # type: ignore[attr-defined]
                params=sp.quantizer_params,  # type: ignore[attr-defined]
            )

        def one(shard: _Shard) -> tuple[np.ndarray, np.ndarray]:
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

        if len(self._shards) == 1 or len(x) >= PARALLEL_QUERIES_MAX:
            # A batch is already spread over every core by faiss (OpenMP over queries); shard
            # threads on top would only oversubscribe them.
            results = [one(s) for s in self._shards]
        else:
            results = list(self._pool.map(one, self._shards))
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
            taken = self._shards[int(s)].ids.take(pa.array(ids[pos])).select(list(columns))
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
    return [s.ids for s in searcher._shards]


def faiss_indexes(searcher: Searcher) -> list[tuple[int | None, Any]]:
    """The faiss indexes that answer searches: (shard number, index); None = all shards merged.

    Their ids: ``index_ids`` / ``shard_rows`` below translate (shard-tagged for IVF shards,
    positions in one store for refined shards merged, row numbers otherwise).
    """
    if searcher._merged is not None:
        return [(None, searcher._merged)]
    return [(no, s.index) for no, s in enumerate(searcher._shards)]


def index_ids(searcher: Searcher, no: int | None, shard: int, rows: np.ndarray) -> np.ndarray:
    """The ids faiss index ``no`` of faiss_indexes holds for ``rows`` of shard ``shard``."""
    rows = np.asarray(rows, dtype=np.int64)
    index = searcher._merged if no is None else searcher._shards[no].index
    if no is None and searcher._positions is not None:  # refined shards merged: positions
        return searcher._positions[shard] + rows
    if isinstance(index, faiss.IndexIVF):
        return (np.int64(shard) << SHARD_ID_SHIFT) | rows
    return rows


def shard_rows(
    searcher: Searcher, no: int | None, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """faiss ids from index ``no`` of faiss_indexes -> (shard numbers int32, rows); -1 where
    an id is -1 (a missing hit)."""
    index = searcher._merged if no is None else searcher._shards[no].index
    if no is None and searcher._positions is not None:
        return shard_plan.shard_rows(ids, searcher._positions)
    if isinstance(index, faiss.IndexIVF):
        shard = np.where(ids >= 0, ids >> SHARD_ID_SHIFT, -1).astype(np.int32)
        return shard, np.where(ids >= 0, ids & ROW_MASK, -1)
    return np.where(ids >= 0, int(no or 0), -1).astype(np.int32), ids


def refine_stores(searcher: Searcher) -> refine.Stores | None:
    """The refine stores (index/refine.py) for a refined layout; None for other layouts.

    The IVF indexes above then score with 4-bit PQ codes: exact scores need a re-rank
    (index.refine.rerank) of ``k * refine.K_FACTORS[-1]`` candidates.
    """
    return searcher._stores if searcher._refined else None
