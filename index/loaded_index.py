"""A build's files made searchable: the manifest checked, every file verified, shards loaded.

Every file (shards, id maps, pca.bin, the merged index) is checked against the manifest's sha256
before it is parsed (index/checksums.py); local shards are memory-mapped in place, gs:// shards
come from a verified local cache. IVF shards, which share one trained quantizer, are by default
stacked at load into one in-memory index (same answers, one coarse assignment, no per-shard
cost: S shards search as fast as one); ``merge_ivf=False`` keeps them memory-mapped, to be
searched one by one. An ``--on-disk`` build (manifest format 3) is served from its merged index,
whose lists file is memory-mapped (index/ondisk.py). Refined layouts (index/refine.py) are
loaded as their IVF part plus a store of their vectors; where one index answers (one shard, or
shards merged) faiss' own ``IndexRefine`` over both does the re-ranking.

What is loaded, and how its faiss ids map to (shard, row), is this module's; answering queries
is index/searcher.py's.
"""

from __future__ import annotations

import logging
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
from index.ivf_lists import ids_tagged, merged_fast_scan

_log = logging.getLogger(__name__)


def current_manifest_uri(workdir: str) -> str:
    """The manifest ``WORKDIR/indexes/CURRENT`` points at (FileNotFoundError: none published)."""
    pointer = pointers.read_pointer(paths.current_index_pointer(workdir))
    if not pointer.value:
        raise FileNotFoundError(
            f"no published index: {paths.current_index_pointer(workdir)} does not exist "
            "(run vsearch build-index, then vsearch publish)"
        )
    return pointer.value


@dataclass
class Shard:
    index: Any  # a faiss index (faiss' type stubs do not know its subclasses' members)
    ids: pa.Table  # listing_id, image_uri, image_index, category_pred; row i = faiss id i


class LoadedIndex:
    """Every file of one build, verified and loaded: the PCA, each shard's faiss index and id map
    (or the merged index that answers for them), and the refine stores of a refined layout."""

    def __init__(
        self,
        manifest: manifest_mod.Manifest,
        build_dir: str,
        *,
        cache_dir: str | None = None,
        mmap: bool = True,
        merge_ivf: bool = True,
    ) -> None:
        manifest.check()
        self.manifest = manifest
        self.build_dir = storage.normalize(build_dir)
        self.cache_dir = cache_dir or default_cache_dir()
        self.mmap = mmap
        self.pca = self._load_pca()
        self.refined: list[Any] = []  # refined shards (each owns its IVF part and vectors)
        # With refined shards searched as one index: faiss' IndexRefine over it, whose ids are
        # positions in one store of every shard's vectors (first rows in ``positions``).
        self.refine_index: Any = None
        self.refine_one: Any = None  # the same, for one query at a time (refine.single_query_view)
        self.positions: np.ndarray | None = None
        if manifest.merged is not None:  # on-disk build: one index, its lists memory-mapped
            self.shards = [Shard(None, read_id_map(build_dir, e)) for e in manifest.shards]
            self.stores = refine.Stores([])
            self.quantizer = None
            self.merged = self._open_merged(manifest.merged)
        else:
            self.shards = [self._load_shard(e) for e in manifest.shards]
            self.stores = refine.Stores([refine.store(r) for r in self.refined])
            self.quantizer = self._shared_quantizer()
            # Refined shards merged: their ids become positions in one store of every shard's
            # vectors (row r of shard s at offsets[s] + r), what faiss' IndexRefine looks up.
            offsets = shard_plan.first_rows([int(r.ntotal) for r in self.refined])
            self.merged = self._merged_ivf(merge_ivf, offsets if self.refined else None)
            if self.merged is not None:
                self.quantizer = self.merged.quantizer
                if len(self.refined) > 1:  # merged lists: the vectors in one store too
                    self.stores = refine.Stores.concatenated(self.stores.flats)
            if self.refined and (self.merged is not None or len(self.shards) == 1):
                answering = self.merged if self.merged is not None else self.shards[0].index
                self.positions = offsets
                self.refine_index = refine.searchable(answering, self.stores.flats[0])
                self.refine_one = refine.searchable(
                    refine.single_query_view(answering), self.stores.flats[0]
                )

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

    def _load_shard(self, entry: manifest_mod.ShardEntry) -> Shard:
        key = (self.manifest.model_version, self.manifest.build_id)
        path = local_shard(self.build_dir, entry, self.cache_dir, key)
        flags = faiss.IO_FLAG_READ_ONLY
        if self.mmap:
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
            self.refined.append(index)
            index = refine.base_ivf(index)
        return Shard(index, read_id_map(self.build_dir, entry))

    def _open_merged(self, entry: manifest_mod.MergedEntry) -> Any:
        """The on-disk merged index (index/ondisk.py), both files verified first."""
        key = (self.manifest.model_version, self.manifest.build_id)
        index_path = local_file(
            self.build_dir, entry.index_path, entry.index_sha256, self.cache_dir, key, "index"
        )
        local_file(
            self.build_dir, entry.lists_path, entry.lists_sha256, self.cache_dir, key, "lists"
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
        return index

    def _shared_quantizer(self) -> Any:
        """The coarse quantizer all IVF shards share (copies of one trained index), or None."""
        if len(self.shards) < 2 or not all(
            isinstance(s.index, faiss.IndexIVF) for s in self.shards
        ):
            return None
        first = self.shards[0].index.quantizer
        centroids = first.reconstruct_n(0, first.ntotal)
        for no, shard in enumerate(self.shards):
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
        if self.quantizer is None or not merge:
            return None
        if isinstance(self.shards[0].index, faiss.IndexIVFFastScan):
            ivfs = [s.index for s in self.shards]
            if int(ivfs[0].bbs) == 32:  # blocks of 32 codes: repacked list by list
                packed = merged_fast_scan(ivfs, offsets)
            elif len(self.refined) == len(ivfs):  # faiss cannot repack: encode the vectors again
                packed = refine.merged_by_encoding(ivfs, self.stores.flats, offsets)
            else:
                _log.warning(
                    "%s: fast-scan blocks faiss cannot repack: shards searched apart",
                    self.build_dir,
                )
                return None
            for shard in self.shards:
                shard.index = None
            return packed
        merged: Any = faiss.clone_index(self.shards[0].index)  # quantizer, type, parameters
        base = self.shards[0].index
        target = faiss.ArrayInvertedLists(base.nlist, base.code_size)
        merged.replace_invlists(target, True)  # fresh owned lists (shard 0's may be mmap views)
        target.this.disown()  # type: ignore[attr-defined]  # the index frees it
        for shard in self.shards:
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
        merged.ntotal = sum(s.index.ntotal for s in self.shards)
        for shard in self.shards:
            shard.index = None  # the merged copy answers; drop the maps
        return merged
