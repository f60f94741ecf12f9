"""One stable hash for every "which bucket does this key fall in" decision.

Used for the train/eval split by listing (``catalog.is_eval_listing``), the index shard of a
listing (``index.shard_plan.shard_of``), the Parquet file of an embedding row
(``transforms.embedding_writer``) and the dead-letter file of a record. Never Python's ``hash``:
it is salted per process, so two workers (or two days) would disagree.

The hash is the first 8 bytes of BLAKE2b of the UTF-8 text, read big-endian: an unsigned 64-bit
integer, identical on every machine, process and Python version. Callers use it two ways, which
are independent of each other in practice: the split compares ``stable_fraction`` (the high bits)
with the eval fraction, and shards take ``stable_hash % n`` (for a power-of-two ``n``, the low
bits).

Changing this function reshuffles every split and shard: eval listings become train listings and
index shards move. ``tests/test_hashing.py`` pins a few values so that such a change fails loudly.

``column_hashes`` is a second, vectorised hash for whole Arrow string columns, used where a job
sends rows to hash buckets that live only inside one run (``transforms.change_detection``): one
BLAKE2b call per row costs ~0.6 us in Python, against ~0.16 us per row here, and a photo passes
through about six splits a day. It is as stable across processes and machines (fixed
uint64 arithmetic), but its values differ from ``stable_hash``'s, so never use it for splits or
shards. ``column_hash`` is the same hash of one string, for rows that come one at a time. The
embed state's files record their bucket in their names (``core/embedstate.py``); a change
of this hash would only make the next daily embed read those photos again (once, and recognise
them by sha256), never skip a wrong one.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SPAN = 2.0**64
# column_hashes: a polynomial over the bytes (an odd multiplier keeps every byte in the low bits),
# then splitmix64's finaliser so that ``% n`` on the low bits is uniform.
_MULTIPLIER = np.uint64(0x100000001B3)
_SEED = np.uint64(0xCBF29CE484222325)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Rows hashed per numpy pass: bounds the per-byte uint64 temporaries to a few tens of MB.
_CHUNK_ROWS = 65_536


def stable_hash(text: str) -> int:
    """An unsigned 64-bit hash of ``text``, the same in every process, machine and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def stable_fraction(text: str) -> float:
    """``stable_hash(text)`` scaled to [0, 1): a uniform, stable draw per key."""
    return stable_hash(text) / _SPAN


def column_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable unsigned 64-bit hash of each string in ``values`` (null hashes as ""), computed on
    the column's bytes in numpy, ~0.2 us per row. Not ``stable_hash``: see the module docstring.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    if values.null_count:
        values = pc.fill_null(values, "")
    out = np.empty(len(values), dtype=np.uint64)
    for start in range(0, len(values), _CHUNK_ROWS):
        chunk = values.slice(start, _CHUNK_ROWS)
        out[start : start + len(chunk)] = _chunk_hashes(chunk)
    return out


_MASK = (1 << 64) - 1


def column_hash(text: str) -> int:
    """``column_hashes`` of one string, in plain Python (~3 us for a 20-character id)."""
    data = text.encode("utf-8")
    multiplier, h, power = int(_MULTIPLIER), int(_SEED), 1
    for byte in data:
        power = (power * multiplier) & _MASK
        h = (h + (byte + 1) * power) & _MASK
    h ^= len(data)
    h ^= h >> 30
    h = (h * int(_MIX1)) & _MASK
    h ^= h >> 27
    h = (h * int(_MIX2)) & _MASK
    return h ^ (h >> 31)


def _chunk_hashes(values: pa.Array) -> np.ndarray:
    _, offsets_buf, data_buf = values.buffers()
    wide = pa.types.is_large_string(values.type)
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if wide else np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1].astype(np.int64)
    lengths = np.diff(offsets)
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    )
    data = data[offsets[0] : offsets[-1]].astype(np.uint64) + np.uint64(1)
    starts = offsets[:-1] - offsets[0]
    # Byte j of a string is weighted by MULTIPLIER ** (j + 1), all mod 2**64.
    position = np.arange(len(data)) - np.repeat(starts, lengths)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)), _MULTIPLIER, dtype=np.uint64))
    h = np.full(len(values), _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        nonempty = lengths > 0
        if len(data):
            h[nonempty] += np.add.reduceat(data * powers[position], starts[nonempty])
        h ^= lengths.astype(np.uint64)
        h ^= h >> np.uint64(30)
        h *= _MIX1
        h ^= h >> np.uint64(27)
        h *= _MIX2
        h ^= h >> np.uint64(31)
    return h
