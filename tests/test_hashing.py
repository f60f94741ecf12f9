"""The one stable hash: pinned values, so a change that would reshuffle splits and shards fails here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa

from core import catalog
from core.hashing import column_hash, column_hashes, stable_fraction, stable_hash
from index import shard_plan
from transforms import embedding_writer

# Changing any of these moves listings between train and eval, and between index shards.
PINNED = {
    "": 16476032584258269876,
    "L000001": 12052342352181368957,
    "listing-42": 13267725156538213103,
    "ünïcode": 2566653803910001293,
}


def test_pinned_values() -> None:
    assert {t: stable_hash(t) for t in PINNED} == PINNED


def test_same_value_in_another_process() -> None:
    """Unlike Python's salted ``hash``: a fresh interpreter (new PYTHONHASHSEED) agrees."""
    code = "from core.hashing import stable_hash; print(stable_hash('listing-42'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == PINNED["listing-42"]


def test_split_and_shards_use_it() -> None:
    ids = [f"L{i:06d}" for i in range(2000)]
    for i in ids[:50]:
        assert shard_plan.shard_of(i, 7) == stable_hash(i) % 7
        assert embedding_writer.shard_of(i, 5) == stable_hash(i) % 5
        assert catalog.is_eval_listing(i, 0.3) == (stable_fraction(i) < 0.3)
    # Uniform enough that a 20% split and 8 shards are balanced on a real-looking id set.
    eval_share = sum(catalog.is_eval_listing(i, 0.2) for i in ids) / len(ids)
    assert 0.17 < eval_share < 0.23
    counts = [0] * 8
    for i in ids:
        counts[shard_plan.shard_of(i, 8)] += 1
    assert min(counts) > 200 and max(counts) < 300
    # The split and the shard are not the same coin: eval listings spread over every shard.
    assert {shard_plan.shard_of(i, 8) for i in ids if catalog.is_eval_listing(i, 0.2)} == set(
        range(8)
    )


def _column_hash_reference(text: str) -> int:
    """``column_hashes`` for one string, written out per byte in plain Python."""
    mask = 2**64 - 1
    data = text.encode("utf-8")
    h = 0xCBF29CE484222325
    for j, byte in enumerate(data):
        h = (h + (byte + 1) * pow(0x100000001B3, j + 1, 2**64)) & mask
    h ^= len(data)
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & mask
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & mask
    return h ^ (h >> 31)


def test_column_hashes_match_the_per_string_definition() -> None:
    """The vectorised bucket hash: each row as if hashed alone, whatever the column's layout
    (chunks, a slice, large_string, nulls, empty and non-ASCII strings, rows past one chunk)."""
    texts = ["", "L000001", "listing-42", "ünïcode", "images/a/b.jpg", "x" * 300]
    texts += [f"gs://bucket/images/{i:07d}/photo-{i % 3}.jpg" for i in range(70_000)]
    want = np.array([_column_hash_reference(t) for t in texts[:200]], dtype=np.uint64)
    whole = column_hashes(pa.array(texts))
    assert whole.dtype == np.uint64 and len(whole) == len(texts)
    assert (whole[:200] == want).all()
    assert whole[-1] == _column_hash_reference(texts[-1])  # past the first 65,536-row pass
    chunked = pa.chunked_array([pa.array(texts[:3]), pa.array(texts[3:])])
    assert (column_hashes(chunked) == whole).all()
    assert (column_hashes(pa.array(texts, pa.large_string()).slice(2, 50)) == whole[2:52]).all()
    assert (
        column_hashes(pa.array(["L000001", None])) == column_hashes(pa.array(["L000001", ""]))
    ).all()
    assert len(column_hashes(pa.chunked_array([], pa.string()))) == 0
    # The one-string form (rows that come one at a time) agrees with the column form.
    assert [column_hash(t) for t in texts[:200]] == want.tolist()
    # Uniform in the low bits, which ``% buckets`` keeps.
    counts = np.bincount((whole % np.uint64(8)).astype(np.int64), minlength=8)
    assert counts.min() > 0.95 * len(texts) / 8


def test_column_hashes_agree_in_another_process() -> None:
    code = (
        "import pyarrow as pa; from core.hashing import column_hashes;"
        "print(int(column_hashes(pa.array(['listing-42']))[0]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == _column_hash_reference("listing-42")
