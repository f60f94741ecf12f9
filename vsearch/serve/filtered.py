"""Filtered vector search with exact filter semantics: over-fetch + post-filter, exact fallback.

1. Over-fetch: ask the ANN index for ``k * overfetch / selectivity`` image hits (selectivity =
   share of indexed images whose listing passes the filter), with its search effort scaled the
   same way (IVF ``nprobe / selectivity``, HNSW ``efSearch`` at least the fetch size: probing the
   usual lists would only hold a selectivity's share of the passing neighbours), keep only hits
   that pass, and group them by listing (best image per listing).
2. Fallback: when fewer than ``k`` listings survive (and more exist), or the over-fetch would
   exceed ``max_fetch`` (a very selective filter), search *only* the filtered subset with faiss'
   IDSelector: IVF indexes probe every list (exhaustive over the subset), flat indexes scan the
   subset, HNSW (a graph a selector cannot search exhaustively) reconstructs the subset's vectors
   and scans them. The subset search is exact in the index's own (PCA'd) space.

Every returned listing passes the filter by construction: no hit is returned without its row
being checked against the mask. Masks and selectors are cached per distinct filter.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index import refine
from index import searcher as searcher_mod
from index.searcher import Searcher
from vsearch.serve import filters
from vsearch.serve.attributes import Attributes

MAX_IMAGES_PER_LISTING = 10  # the catalog contract: 1..10 photos per listing


@dataclass(frozen=True)
class Match:
    listing_id: str
    score: float  # inner product of L2-normalised vectors (cosine), higher is closer
    image_uri: str
    image_index: int
    code: int  # the listing's row in Attributes (-1: the catalog does not know it)


@dataclass(frozen=True)
class _Subset:
    allowed: list[np.ndarray]  # per shard: row passes the filter
    images: int  # rows that pass
    listings: int  # listings that pass
    selectors: list[tuple[Any, Any]]  # per faiss index: (IDSelector or rows, keep-alive array)


class FilteredSearch:
    def __init__(
        self,
        searcher: Searcher,
        attributes: Attributes,
        overfetch: int = 5,
        max_fetch: int = 4096,
        cache_size: int = 64,
    ) -> None:
        self.searcher = searcher
        self.attributes = attributes
        self.overfetch = overfetch  # image hits per wanted listing (a listing has <= 10 photos)
        self.max_fetch = max_fetch  # beyond this many image hits the exact subset search is cheaper
        maps = searcher_mod.id_maps(searcher)
        self._listing = [m.column("listing_id").to_numpy(zero_copy_only=False) for m in maps]
        self._uri = [m.column("image_uri").to_numpy(zero_copy_only=False) for m in maps]
        self._image = [
            m.column("image_index").to_numpy(zero_copy_only=False).astype(np.int64) for m in maps
        ]
        self._indexes = searcher_mod.faiss_indexes(searcher)
        self._cache: OrderedDict[Any, _Subset] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return int(self.searcher.manifest.ntotal)

    def search(
        self, vectors: np.ndarray, k: int, f: filters.Filter
    ) -> tuple[list[list[Match]], int]:
        """Top-k listings per query that pass ``f``; also how many queries took the fallback."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = len(vectors)
        subset = None if f.empty else self._subset(f)
        if subset is not None and subset.images == 0:
            return [[] for _ in range(n)], 0
        want = k if subset is None else min(k, subset.listings)
        share = 1.0 if subset is None else subset.images / max(1, self.ntotal)
        fetch = min(self.ntotal, math.ceil(k * self.overfetch / share))
        out: list[list[Match] | None] = [None] * n
        params = self._scaled_params(share, fetch)
        if subset is None or (fetch <= self.max_fetch and params is not None):
            scores, shard, ids = self.searcher.search_raw(vectors, fetch, params)
            for q in range(n):
                hits = self._group(scores[q], shard[q], ids[q], subset, k)
                if len(hits) >= want or subset is None:
                    out[q] = hits
        todo = [q for q in range(n) if out[q] is None]
        if todo:
            assert subset is not None
            scores, shard, ids = self._exact(vectors[todo], k, subset)
            for j, q in enumerate(todo):
                out[q] = self._group(scores[j], shard[j], ids[j], subset, k)
        return [hits or [] for hits in out], len(todo)

    # ------------------------------------------------------------------ pieces

    def _scaled_params(self, share: float, fetch: int) -> dict[str, int] | None:
        """The manifest's search effort scaled to the filter; None when a full scan is cheaper."""
        params = dict(self.searcher.manifest.search_params)
        if share >= 1.0:
            return params
        if "nprobe" in params:
            nlist = max(int(getattr(index, "nlist", 1)) for _, index in self._indexes)
            nprobe = math.ceil(params["nprobe"] / share)
            return None if nprobe * 2 > nlist else {"nprobe": nprobe}
        if "efSearch" in params:
            return {"efSearch": max(math.ceil(params["efSearch"] / share), fetch)}
        return params

    def _group(
        self,
        scores: np.ndarray,
        shard: np.ndarray,
        ids: np.ndarray,
        subset: _Subset | None,
        k: int,
    ) -> list[Match]:
        hits: list[Match] = []
        seen: set[str] = set()
        codes = self.attributes.row_listing
        for score, s, i in zip(scores, shard, ids, strict=True):
            if s < 0 or i < 0:
                continue
            s, i = int(s), int(i)
            if subset is not None and not subset.allowed[s][i]:
                continue  # the exact semantics: a hit is returned only if its row passes
            lid = str(self._listing[s][i])
            if lid in seen:
                continue
            seen.add(lid)
            hits.append(
                Match(
                    lid,
                    float(score),
                    str(self._uri[s][i]),
                    int(self._image[s][i]),
                    int(codes[s][i]),
                )
            )
            if len(hits) == k:
                break
        return hits

    def _subset(self, f: filters.Filter) -> _Subset:
        key = f.key()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        allowed = self.attributes.allowed_rows(f)
        listings = int(filters.mask(f, self.attributes.match).sum())
        selectors = [self._selector(no, index, allowed) for no, index in self._indexes]
        subset = _Subset(allowed, int(sum(a.sum() for a in allowed)), listings, selectors)
        with self._lock:
            self._cache[key] = subset
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return subset

    def _selector(self, no: int | None, index: Any, allowed: list[np.ndarray]) -> tuple[Any, Any]:
        shards = range(len(allowed)) if no is None else [no]
        ids = np.concatenate(
            [
                searcher_mod.index_ids(self.searcher, no, s, np.nonzero(allowed[s])[0])
                for s in shards
            ]
            or [np.empty(0, np.int64)]
        )
        if isinstance(index, faiss.IndexHNSW):
            return None, ids  # scanned from reconstructed vectors instead
        return faiss.IDSelectorBatch(ids), ids

    def _exact(
        self, vectors: np.ndarray, k: int, subset: _Subset
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact top image hits over the filtered subset only (enough for k listings)."""
        x = self.searcher.project(vectors)
        stored = searcher_mod.refine_stores(self.searcher)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for (no, index), (sel, ids) in zip(self._indexes, subset.selectors, strict=True):
            kk = min(len(ids), k * MAX_IMAGES_PER_LISTING)
            if kk == 0:
                continue
            if sel is None:  # HNSW: scan the subset's stored vectors
                vecs = index.reconstruct_batch(ids)
                sims = x @ vecs.T
                top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
                d, i = np.take_along_axis(sims, top, axis=1), ids[top]
            elif isinstance(index, faiss.IndexIVF):
                params = faiss.SearchParametersIVF(sel=sel, nprobe=index.nlist)  # type: ignore[call-arg]
                if stored is None:
                    d, i = index.search(x, kk, params=params)
                else:  # refined layout: PQ-scored candidates, re-ranked on the stored vectors
                    fetch = min(len(ids), kk * refine.K_FACTORS[-1])
                    _, i = index.search(x, fetch, params=params)
                    shard, rows = searcher_mod.shard_rows(self.searcher, no, i)
                    d, shard, rows = refine.rerank(x, shard, rows, stored, kk)
                    parts.append((d.astype(np.float32), shard.astype(np.int32), rows))
                    continue
            else:
                flat_params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
                d, i = index.search(x, kk, params=flat_params)
            shard, i = searcher_mod.shard_rows(self.searcher, no, i)
            parts.append((d.astype(np.float32), shard, i))
        if not parts:
            empty = np.empty((len(x), 0))
            return empty.astype(np.float32), empty.astype(np.int32), empty.astype(np.int64)
        scores = np.concatenate([p[0] for p in parts], axis=1)
        shard = np.concatenate([p[1] for p in parts], axis=1)
        ids = np.concatenate([p[2] for p in parts], axis=1)
        scores = np.where(ids < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")
        take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        return take(scores), take(shard), take(ids)
