"""The one stable hash: pinned values, so a change that would reshuffle splits and shards fails here."""

from __future__ import annotations

import subprocess
import sys

from index import sharding
from transforms import embedding_writer
from vsearch.core import catalog
from vsearch.core.hashing import stable_fraction, stable_hash

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
    code = "from vsearch.core.hashing import stable_hash; print(stable_hash('listing-42'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == PINNED["listing-42"]


def test_split_and_shards_use_it() -> None:
    ids = [f"L{i:06d}" for i in range(2000)]
    for i in ids[:50]:
        assert sharding.shard_of(i, 7) == stable_hash(i) % 7
        assert embedding_writer.shard_of(i, 5) == stable_hash(i) % 5
        assert catalog.is_eval_listing(i, 0.3) == (stable_fraction(i) < 0.3)
    # Uniform enough that a 20% split and 8 shards are balanced on a real-looking id set.
    eval_share = sum(catalog.is_eval_listing(i, 0.2) for i in ids) / len(ids)
    assert 0.17 < eval_share < 0.23
    counts = [0] * 8
    for i in ids:
        counts[sharding.shard_of(i, 8)] += 1
    assert min(counts) > 200 and max(counts) < 300
    # The split and the shard are not the same coin: eval listings spread over every shard.
    assert {sharding.shard_of(i, 8) for i in ids if catalog.is_eval_listing(i, 0.2)} == set(
        range(8)
    )
