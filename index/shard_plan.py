"""Pure shard arithmetic: which shard a listing lives on, what a build's files are called, and how
shard-tagged faiss ids map back to (shard, row).

A listing's shard is ``core.hashing.stable_hash`` of its ``listing_id`` (not Python's
salted ``hash``), so every image of a listing lands on one shard, every worker and every day
agree, and a listing's shard never depends on which other listings exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.hashing import stable_hash


def shard_of(listing_id: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) that holds every image of ``listing_id``."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return stable_hash(listing_id) % num_shards


def shards_of(listing_ids: Sequence[str], num_shards: int) -> np.ndarray:
    """``shard_of`` for many ids at once (int32 array)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if num_shards == 1:
        return np.zeros(len(listing_ids), dtype=np.int32)
    return np.fromiter(
        (stable_hash(i) % num_shards for i in listing_ids), dtype=np.int32, count=len(listing_ids)
    )


def shard_file(index: int) -> str:
    """``shard-00003.faiss`` (DESIGN.md's name; zero padded so names sort in shard order)."""
    return f"shard-{index:05d}.faiss"


def shard_ids_file(index: int) -> str:
    """``shard-00003.ids.parquet``: row i is faiss id i of that shard."""
    return f"shard-{index:05d}.ids.parquet"


# IVF shards are copies of one trained index; their faiss ids carry the shard number,
# (shard << SHARD_ID_SHIFT) | row, so stacking every shard's inverted lists gives one searchable
# index with unambiguous ids. Row = id & ROW_MASK = the row of the shard's id map.
SHARD_ID_SHIFT = 40
ROW_MASK = (1 << SHARD_ID_SHIFT) - 1


def tag_ids(shard_no: int, first_row: int, count: int) -> np.ndarray:
    start = (shard_no << SHARD_ID_SHIFT) + first_row
    return np.arange(start, start + count, dtype=np.int64)


# A refined layout's shards merged for searching number their vectors by position in all shards'
# rows laid end to end instead (row r of shard s is offsets[s] + r): faiss' own re-ranking
# (IndexRefine) looks each candidate up by its id in one store of every shard's vectors.


def first_rows(counts: Sequence[int]) -> np.ndarray:
    """Each shard's first position in all shards' rows laid end to end (int64)."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)[:-1]]).astype(np.int64)


def positions(tagged: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shard-tagged ids -> positions (``offsets`` from first_rows)."""
    return offsets[tagged >> SHARD_ID_SHIFT] + (tagged & ROW_MASK)


def shard_rows(pos: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions -> (shard numbers int32, rows); both -1 where ``pos`` is -1 (a missing hit)."""
    shard = (np.searchsorted(offsets, pos, side="right") - 1).astype(np.int32)
    missing = pos < 0
    return np.where(missing, -1, shard), np.where(missing, -1, pos - offsets[shard])


PCA_FILE = "pca.bin"
MANIFEST_FILE = "manifest.json"
