"""IVF shards merged on disk (index/ondisk.py) answer exactly as the in-memory merge."""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks import embedding_tables, vectors
from index import builder, ondisk, publish
from index.searcher import Searcher
from index.shard_plan import ROW_MASK, SHARD_ID_SHIFT
from index.tuning import search_parameters

MODEL = "test-model"


# The second layout is what auto builds from 2,048 lists up (a graph over the centroids as the
# coarse quantizer): shards must still share it, merge in memory and on disk, and be searched
# apart with one coarse assignment.
@pytest.mark.parametrize("factory", ["IVF256,Flat", "IVF256_HNSW32,Flat"])
def test_four_shards_merged_on_disk_answer_as_in_memory(tmp_path, factory: str) -> None:  # type: ignore[no-untyped-def]
    table = embedding_tables.embedding_table(vectors.clustered(50_000, dim=32), 2, MODEL)
    settings = builder.IndexSettings(
        factory=factory, shards=4, validation_queries=200, latency_queries=10
    )
    result = builder.build_index(
        embedding_tables.batches_factory(table, 10_000), settings, str(tmp_path / "b"), MODEL, "b1"
    )
    paths = [str(tmp_path / "b" / e.path) for e in result.manifest.shards]
    ondisk.merge_on_disk(paths, str(tmp_path / "merged"))
    # Moved elsewhere: the index finds its lists beside it, not at the path it was written to.
    os.rename(tmp_path / "merged", tmp_path / "moved")
    index = ondisk.open_merged(str(tmp_path / "moved" / ondisk.MERGED_INDEX))
    assert index.ntotal == 50_000
    queries = vectors.clustered(100, dim=32, point_seed=9)
    assert result.manifest.validation is not None
    assert result.manifest.validation.recall_at_10 >= 0.95
    with (
        Searcher.from_manifest_uri(result.manifest_uri) as searcher,
        Searcher.from_manifest_uri(result.manifest_uri, merge_ivf=False) as apart,
    ):
        walks = [{"nprobe": 1, "quantizer_efSearch": 4}] if "HNSW" in factory else []
        for params in ({"nprobe": 4}, dict(result.manifest.search_params), *walks):
            scores, shard, rows = searcher.search_raw(queries, 10, params)
            d, i = index.search(searcher.project(queries), 10, params=search_parameters(params))
            np.testing.assert_allclose(d, scores, atol=1e-5)
            assert (shard == (i >> SHARD_ID_SHIFT)).mean() > 0.99  # ties aside
            assert (rows == (i & ROW_MASK)).mean() > 0.99
            np.testing.assert_allclose(apart.search_raw(queries, 10, params)[0], d, atol=1e-5)


def test_fast_scan_shards_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = embedding_tables.embedding_table(vectors.clustered(6000, dim=32), 2, MODEL)
    settings = builder.IndexSettings(
        factory="IVF32,PQ8x4fs,RFlat", validation_queries=100, latency_queries=5, target_recall=0.5
    )
    result = builder.build_index(
        embedding_tables.batches_factory(table, 3000), settings, str(tmp_path / "b"), MODEL, "b1"
    )
    with pytest.raises(ValueError, match="fast-scan"):
        ondisk.merge_on_disk([str(tmp_path / "b" / result.manifest.shards[0].path)], str(tmp_path))


def test_on_disk_build_serves_its_merged_lists_and_answers_as_the_in_memory_build(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    import json

    import faiss

    from index import manifest
    from index.checksums import ShardError
    from index.searcher import faiss_indexes

    table = embedding_tables.embedding_table(vectors.clustered(20_000, dim=32), 2, MODEL)
    built = {}
    for flag in (False, True):
        settings = builder.IndexSettings(
            factory="IVF64,Flat", shards=3, validation_queries=200, latency_queries=10, on_disk=flag
        )
        out = str(tmp_path / f"b-{flag}")
        built[flag] = builder.build_index(
            embedding_tables.batches_factory(table, 4_000), settings, out, MODEL, f"b{flag:d}"
        )
    r = built[True]
    m = manifest.read(r.manifest_uri)  # round trip through JSON
    assert m.format_version == 3 and m.merged is not None and m == r.manifest
    assert json.loads((tmp_path / "b-True" / "manifest.json").read_text())["merged"] == {
        "index_path": "merged.faiss",
        "index_sha256": m.merged.index_sha256,
        "lists_path": "merged.ivfdata",
        "lists_sha256": m.merged.lists_sha256,
    }
    assert built[False].manifest.format_version == 2 and built[False].manifest.merged is None
    assert r.manifest.validation is not None and r.manifest.validation.recall_at_10 >= 0.95
    # Publishing checks every listed file, the merged pair too.
    (tmp_path / "b-True" / "merged.ivfdata").rename(tmp_path / "aside")
    with pytest.raises(manifest.ManifestError, match="lists merged.ivfdata, which is missing"):
        publish.publish(str(tmp_path / "work"), r.manifest_uri)
    (tmp_path / "aside").rename(tmp_path / "b-True" / "merged.ivfdata")

    queries = vectors.clustered(100, dim=32, point_seed=9)
    with (
        Searcher.from_manifest_uri(r.manifest_uri) as on_disk,
        Searcher.from_manifest_uri(built[False].manifest_uri) as in_memory,
    ):
        ((_, index),) = faiss_indexes(on_disk)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)  # type: ignore[arg-type]
        assert isinstance(lists, faiss.OnDiskInvertedLists)  # served from the file, not RAM
        params = {"nprobe": 8}
        a, b = on_disk.search_keys(queries, 10, params), in_memory.search_keys(queries, 10, params)
        assert (a == b).mean() > 0.99  # ties aside
        hits = on_disk.search_vectors(queries[:3], k=5)
        assert [len(h) for h in hits] == [5, 5, 5]

    # A flipped byte in the lists file: refused by name before faiss maps it. The corrupted copy
    # replaces the file by rename, as a publisher would: truncating a file that faiss still has
    # mapped (``index`` above, or a prefetch thread) is a SIGBUS, which once killed this worker.
    del lists, index
    lists_file = tmp_path / "b-True" / "merged.ivfdata"
    data = bytearray(lists_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted = lists_file.with_name("merged.ivfdata.corrupted")
    corrupted.write_bytes(bytes(data))
    os.replace(corrupted, lists_file)
    with pytest.raises(ShardError, match=r"lists .*merged\.ivfdata is corrupted"):
        Searcher.from_manifest_uri(r.manifest_uri)


def test_on_disk_needs_a_plain_ivf_layout() -> None:
    for factory in ("HNSW32", "IVF64,PQ8x4fs,RFlat", "IVF64,PQ8x4fs", "Flat"):
        with pytest.raises(ValueError, match="--on-disk needs a plain IVF layout"):
            builder.IndexSettings(factory=factory, on_disk=True)
    builder.IndexSettings(factory="IVF64,PQ8", on_disk=True)  # IVF-PQ lists are files too
