"""Every file of a build is verified before use: id maps and pca.bin too; old manifests still load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import embedding_tables, vectors
from index import builder, manifest
from index.checksums import ShardError
from index.searcher import Searcher

DIM = 32
MODEL = "test-model"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> builder.BuildResult:
    table = embedding_tables.embedding_table(vectors.clustered(3000, dim=DIM), 3, MODEL)
    settings = builder.IndexSettings(
        factory="Flat",
        shards=2,
        pca_dim=16,
        target_recall=0.1,  # a cut PCA (checksummed file) is what matters here, not recall
        validation_queries=100,
        latency_queries=20,
    )
    out = str(tmp_path_factory.mktemp("verify") / "build")
    return builder.build_index(
        embedding_tables.batches_factory(table, 1000), settings, out, MODEL, "b1"
    )


def _file(result: builder.BuildResult, name: str) -> str:
    return os.path.join(os.path.dirname(result.manifest_uri), name)


def test_manifest_carries_a_sha256_for_every_file(built: builder.BuildResult) -> None:
    d = json.loads(open(built.manifest_uri).read())
    assert d["format_version"] == 2
    assert len(d["pca_sha256"]) == 64
    assert all(len(s["ids_sha256"]) == 64 and len(s["sha256"]) == 64 for s in d["shards"])


def test_every_single_byte_corruption_of_an_id_map_is_refused(
    built: builder.BuildResult,
) -> None:
    path = _file(built, built.manifest.shards[1].ids_path)
    original = open(path, "rb").read()
    positions = np.linspace(0, len(original) - 1, 39).astype(int)
    try:
        for pos in positions:
            damaged = bytearray(original)
            damaged[pos] ^= 0x01
            open(path, "wb").write(bytes(damaged))
            with pytest.raises(ShardError, match="shard-00001.ids.parquet.*corrupted"):
                Searcher.from_manifest_uri(built.manifest_uri)
    finally:
        open(path, "wb").write(original)
    with Searcher.from_manifest_uri(built.manifest_uri) as s:  # restored: loads again
        assert s.manifest.ntotal == 3000


def test_corrupted_pca_is_refused(built: builder.BuildResult, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = _file(built, "pca.bin")
    original = open(path, "rb").read()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x80  # a float of the matrix: faiss would read it happily
    try:
        open(path, "wb").write(bytes(damaged))
        with pytest.raises(ShardError, match="pca.bin.*corrupted"):
            Searcher.from_manifest_uri(built.manifest_uri)
    finally:
        open(path, "wb").write(original)


def test_format_1_manifest_still_loads_and_answers_the_same(
    built: builder.BuildResult, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    d = json.loads(open(built.manifest_uri).read())
    d["format_version"] = 1
    del d["pca_sha256"]
    for s in d["shards"]:
        del s["ids_sha256"]
    old = _file(built, "manifest-v1.json")
    open(old, "w").write(json.dumps(d))
    q = vectors.clustered(20, dim=DIM, point_seed=5)
    with (
        Searcher.from_manifest_uri(old) as a,
        Searcher.from_manifest_uri(built.manifest_uri) as b,
    ):
        assert a.manifest.format_version == 1 and a.manifest.pca_sha256 is None
        assert a.search_vectors(q, 5) == b.search_vectors(q, 5)
    os.remove(old)


def test_format_2_manifest_without_checksums_is_refused(built: builder.BuildResult) -> None:
    d = json.loads(open(built.manifest_uri).read())
    del d["shards"][0]["ids_sha256"]
    with pytest.raises(
        manifest.ManifestError, match="id map shard-00000.ids.parquet has no sha256"
    ):
        manifest.from_json(d)
    d = json.loads(open(built.manifest_uri).read())
    d["pca_sha256"] = None
    with pytest.raises(manifest.ManifestError, match="pca_sha256"):
        manifest.from_json(d)
