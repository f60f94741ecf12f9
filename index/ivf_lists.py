"""Low-level IVF helpers for searching shards that share one coarse quantizer.

Shards of one build are partitions of the same IVF lists (one quantizer trained once); the
Searcher assigns a query to lists once and searches every shard's lists with that assignment.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from index.sharding import SHARD_ID_SHIFT


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
