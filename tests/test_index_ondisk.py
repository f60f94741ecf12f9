"""IVF shards merged on disk (index/ondisk.py) answer exactly as the in-memory merge."""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks import vectors
from index import builder, ondisk, synthetic
from index.searcher import Searcher
from index.sharding import ROW_MASK, SHARD_ID_SHIFT
from index.tuning import search_parameters

MODEL = "test-model"


def test_four_shards_merged_on_disk_answer_as_in_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = synthetic.embedding_table(vectors.clustered(50_000, dim=32), 2, MODEL)
    settings = builder.IndexSettings(
        factory="IVF256,Flat", shards=4, validation_queries=200, latency_queries=10
    )
    result = builder.build_index(
        synthetic.batches_factory(table, 10_000), settings, str(tmp_path / "b"), MODEL, "b1"
    )
    paths = [str(tmp_path / "b" / e.path) for e in result.manifest.shards]
    ondisk.merge_on_disk(paths, str(tmp_path / "merged"))
    # Moved elsewhere: the index finds its lists beside it, not at the path it was written to.
    os.rename(tmp_path / "merged", tmp_path / "moved")
    index = ondisk.open_merged(str(tmp_path / "moved" / ondisk.MERGED_INDEX))
    assert index.ntotal == 50_000
    queries = vectors.clustered(100, dim=32, point_seed=9)
    with Searcher.from_manifest_uri(result.manifest_uri) as searcher:
        for params in ({"nprobe": 4}, dict(result.manifest.search_params)):
            scores, shard, rows = searcher.search_raw(queries, 10, params)
            d, i = index.search(searcher.project(queries), 10, params=search_parameters(params))
            np.testing.assert_allclose(d, scores, atol=1e-5)
            assert (shard == (i >> SHARD_ID_SHIFT)).mean() > 0.99  # ties aside
            assert (rows == (i & ROW_MASK)).mean() > 0.99


def test_fast_scan_shards_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = synthetic.embedding_table(vectors.clustered(6000, dim=32), 2, MODEL)
    settings = builder.IndexSettings(
        factory="IVF32,PQ8x4fs,RFlat", validation_queries=100, latency_queries=5, target_recall=0.5
    )
    result = builder.build_index(
        synthetic.batches_factory(table, 3000), settings, str(tmp_path / "b"), MODEL, "b1"
    )
    with pytest.raises(ValueError, match="fast-scan"):
        ondisk.merge_on_disk([str(tmp_path / "b" / result.manifest.shards[0].path)], str(tmp_path))
