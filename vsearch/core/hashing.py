"""One stable hash for every "which bucket does this key fall in" decision.

Used for the train/eval split by listing (``catalog.is_eval_listing``), the index shard of a
listing (``index.sharding.shard_of``), the Parquet file of an embedding row
(``transforms.embedding_writer``) and the dead-letter file of a record. Never Python's ``hash``:
it is salted per process, so two workers (or two days) would disagree.

The hash is the first 8 bytes of BLAKE2b of the UTF-8 text, read big-endian: an unsigned 64-bit
integer, identical on every machine, process and Python version. Callers use it two ways, which
are independent of each other in practice: the split compares ``stable_fraction`` (the high bits)
with the eval fraction, and shards take ``stable_hash % n`` (for a power-of-two ``n``, the low
bits).

Changing this function reshuffles every split and shard: eval listings become train listings and
index shards move. ``tests/test_hashing.py`` pins a few values so that such a change fails loudly.
"""

from __future__ import annotations

import hashlib

_SPAN = 2.0**64


def stable_hash(text: str) -> int:
    """An unsigned 64-bit hash of ``text``, the same in every process, machine and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def stable_fraction(text: str) -> float:
    """``stable_hash(text)`` scaled to [0, 1): a uniform, stable draw per key."""
    return stable_hash(text) / _SPAN
