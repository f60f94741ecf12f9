"""Low-level IVF helpers for searching shards that share one coarse quantizer.

Shards of one build are partitions of the same IVF lists (one quantizer trained once); the
Searcher assigns a query to lists once and searches every shard's lists with that assignment.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from index.shard_plan import SHARD_ID_SHIFT, positions


def ids_tagged(index: Any, shard_no: int) -> bool:
    """Whether an IVF shard's ids carry its shard number (builds by this code do)."""
    invlists = index.invlists
    for lst in range(index.nlist):
        if invlists.list_size(lst):
            first = int(faiss.rev_swig_ptr(invlists.get_ids(lst), 1)[0])
            return first >> SHARD_ID_SHIFT == shard_no
    return True  # an empty shard has nothing to mislabel


def search_preassigned(
    index: Any, x: np.ndarray, k: int, coarse: tuple[np.ndarray, np.ndarray], params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """IVF search with a given coarse assignment and per-call parameters.

    faiss' Python wrapper of search_preassigned refuses per-call parameters (it would need the
    index's own nprobe changed, which is not thread-safe); the C++ method takes them.
    """
    dq = np.ascontiguousarray(coarse[0], dtype=np.float32)
    iq = np.ascontiguousarray(coarse[1], dtype=np.int64)
    n = x.shape[0]
    distances = np.empty((n, k), dtype=np.float32)
    labels = np.empty((n, k), dtype=np.int64)
    index.search_preassigned_c(
        n,
        faiss.swig_ptr(x),
        k,
        faiss.swig_ptr(iq),
        faiss.swig_ptr(dq),
        faiss.swig_ptr(distances),
        faiss.swig_ptr(labels),
        False,
        params,
    )
    return distances, labels


def merged_fast_scan(indexes: list[Any], offsets: np.ndarray | None = None) -> Any:
    """Fast-scan IVF shards of one trained index merged list by list into a new index.

    Ids are kept (shard-tagged), or with ``offsets`` (shard_plan.first_rows) become positions in
    all shards' rows laid end to end (a refined layout's merged store).

    Each merged list is packed once, from every shard's unpacked codes, into an empty list.
    faiss' own ``merge_from`` is not safe here: appending to a list that already holds a
    multiple of ``block_size`` codes takes a whole-block memcpy sized for the merged list, not
    for the appended part (faiss 1.15 ``BlockInvertedLists::add_entries``), and writes past the
    list's end; at 1M vectors over 8 shards that crashed the searcher (segfault in merge_from).
    """
    out: Any = faiss.clone_index(indexes[0])  # quantizer, PQ, parameters
    out.invlists.reset()  # same packing, empty lists
    packer = out.get_CodePacker()
    nvec, code_size, block_size = int(packer.nvec), int(packer.code_size), int(packer.block_size)
    if nvec != 32:  # faiss 1.15's CodePackerPQ4 does not round-trip other block sizes (measured)
        raise ValueError(
            f"fast-scan shards with {nvec}-code blocks cannot be merged; build with faiss' "
            "default 32-code blocks (PQ<m>x4fs, not PQ<m>x4fs_<block>)"
        )
    one = np.empty(nvec * code_size, dtype=np.uint8)
    for lst in range(out.nlist):
        sizes = [int(ix.invlists.list_size(lst)) for ix in indexes]
        total = sum(sizes)
        if not total:
            continue
        blocks = -(-total // nvec)
        flat = np.zeros((blocks * nvec, code_size), dtype=np.uint8)
        ids = np.empty(total, dtype=np.int64)
        at = 0
        for ix, n in zip(indexes, sizes, strict=True):
            if not n:
                continue
            n_blocks = -(-n // nvec)
            src = faiss.rev_swig_ptr(ix.invlists.get_codes(lst), n_blocks * block_size)
            for b in range(n_blocks):
                packer.unpack_all(faiss.swig_ptr(src[b * block_size :]), faiss.swig_ptr(one))
                m = min(nvec, n - b * nvec)
                flat[at + b * nvec : at + b * nvec + m] = one.reshape(nvec, code_size)[:m]
            tagged = faiss.rev_swig_ptr(ix.invlists.get_ids(lst), n)
            ids[at : at + n] = tagged if offsets is None else positions(tagged, offsets)
            at += n
        packed = np.zeros(blocks * block_size, dtype=np.uint8)
        for b in range(blocks):
            packer.pack_all(
                faiss.swig_ptr(flat[b * nvec : (b + 1) * nvec]),
                faiss.swig_ptr(packed[b * block_size :]),
            )
        out.invlists.add_entries(lst, total, faiss.swig_ptr(ids), faiss.swig_ptr(packed))
    out.ntotal = sum(int(ix.ntotal) for ix in indexes)
    return out
