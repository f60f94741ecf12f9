"""Build -> search on synthetic clustered vectors: every index kind, shards, corrupted files."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import embedding_tables, vectors
from index import builder, manifest, source
from index.checksums import ShardError
from index.recall import exact_topk, recall_at_k, row_keys
from index.searcher import Searcher

DIM = 32
N = 6000  # 2,000 listings x 3 photos
IMAGES = 3
MODEL = "test-model"


@pytest.fixture(scope="module")
def table():  # type: ignore[no-untyped-def]
    return embedding_tables.embedding_table(vectors.clustered(N, dim=DIM), IMAGES, MODEL)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return vectors.clustered(100, dim=DIM, point_seed=9)


def build(
    table, tmp_path, factory: str, shards: int = 1, target: float = 0.95, extra_queries=None, **kw
):  # type: ignore[no-untyped-def]
    if "PQ" in factory:
        kw.setdefault(
            "max_train_size", 2000
        )  # PQ codebooks train slowly; recall is not the point here
    settings = builder.IndexSettings(
        factory=factory,
        shards=shards,
        target_recall=target,
        validation_queries=200,
        latency_queries=50,
        **kw,
    )
    out = str(tmp_path / f"{factory.replace(',', '_')}-{shards}")
    return builder.build_index(
        embedding_tables.batches_factory(table, 1000),
        settings,
        out,
        MODEL,
        "b1",
        extra_queries=extra_queries,
    )


def exact(table, q: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    keys = row_keys(table.column("listing_id").to_pylist(), table.column("image_index").to_pylist())
    return exact_topk(q, [(source.batch_vectors(table), keys)], 10).keys


@pytest.mark.parametrize(
    ("factory", "shards", "target"),
    [("Flat", 1, 0.95), ("IVF32,Flat", 3, 0.95), ("IVF16,PQ8", 2, 0.5), ("HNSW16", 2, 0.95)],
)
def test_build_then_search(
    table, queries, tmp_path, factory: str, shards: int, target: float
) -> None:  # type: ignore[no-untyped-def]
    result = build(table, tmp_path, factory, shards, target)
    m = result.manifest
    assert m.factory == factory and len(m.shards) == shards and m.ntotal == N
    assert m.validation is not None and m.validation.recall_at_10 >= target
    assert manifest.read(result.manifest_uri) == m
    with Searcher.from_manifest_uri(result.manifest_uri) as s:
        # A database photo finds its own listing first.
        x = source.batch_vectors(table)
        hits = s.search_vectors(x[[0, 301, 5999]], k=5)
        own = [embedding_tables.listing_id(i, IMAGES) for i in (0, 301, 5999)]
        if "PQ" in factory:  # lossy codes: its own listing is near the top, not always first
            assert all(o in {h.listing_id for h in row} for o, row in zip(own, hits, strict=True))
        else:
            assert [row[0].listing_id for row in hits] == own
        assert all(len({h.listing_id for h in row}) == len(row) == 5 for row in hits)  # grouped
        top = hits[0][0]
        assert top.category in embedding_tables.CATEGORIES and top.image_uri.startswith("mem://")
        # Recall on fresh queries is close to what validation recorded.
        r = recall_at_k(s.search_keys(queries, 10), exact(table, queries))
        assert r >= m.validation.recall_at_10 - 0.1


def test_all_images_of_a_listing_share_a_shard(table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = build(table, tmp_path, "Flat", shards=4)
    seen: dict[str, str] = {}
    for e in result.manifest.shards:
        for lid in pq.read_table(os.path.join(os.path.dirname(result.manifest_uri), e.ids_path))[
            "listing_id"
        ].to_pylist():
            assert seen.setdefault(lid, e.path) == e.path


def test_four_flat_shards_equal_one(table, queries, tmp_path) -> None:  # type: ignore[no-untyped-def]
    one, four = build(table, tmp_path, "Flat", 1), build(table, tmp_path, "Flat", 4)
    with (
        Searcher.from_manifest_uri(one.manifest_uri) as a,
        Searcher.from_manifest_uri(four.manifest_uri) as b,
    ):
        sa, _, _ = a.search_raw(queries, 10)
        sb, _, _ = b.search_raw(queries, 10)
        np.testing.assert_allclose(sa, sb, atol=1e-5)
        assert (
            a.search_keys(queries, 10) == b.search_keys(queries, 10)
        ).mean() > 0.99  # ties aside
        assert [h.listing_id for h in a.search_vectors(queries[:5], 7)[0]] == [
            h.listing_id for h in b.search_vectors(queries[:5], 7)[0]
        ]


def test_auto_on_small_data_is_exact(table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert build(table, tmp_path, "auto").manifest.factory == "Flat"


def test_auto_falls_back_to_refined_ivf_on_hard_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = embedding_tables.embedding_table(vectors.manifold(24_000, dim=64), 2, MODEL)
    result = build(t, tmp_path, "auto", memory_budget_bytes=1 << 30)
    assert result.manifest.factory == "IVF128,PQ16x4fs,RFlat"  # about sqrt(24k) lists
    assert [t["reached"] for t in result.report["trials"]] == [False, True]


def test_below_target_fails_and_writes_no_manifest(table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(source.IndexBuildError, match="below the target"):
        build(table, tmp_path, "IVF16,PQ4", target=0.99)
    assert not (tmp_path / "IVF16_PQ4-1" / "manifest.json").exists()


def test_bad_input_is_a_clear_error(table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(source.IndexBuildError, match="versions never mix"):
        builder.build_index(
            embedding_tables.batches_factory(table),
            builder.IndexSettings(),
            str(tmp_path),
            "other",
            "b",
        )
    t = embedding_tables.embedding_table(vectors.clustered(100, dim=DIM) * 2, 1, MODEL)
    with pytest.raises(source.IndexBuildError, match="not L2-normalised"):
        builder.build_index(
            embedding_tables.batches_factory(t), builder.IndexSettings(), str(tmp_path), MODEL, "b"
        )
    with pytest.raises(source.IndexBuildError, match="no embeddings"):
        builder.build_index(lambda: iter(()), builder.IndexSettings(), str(tmp_path), MODEL, "b")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shard_is_a_clear_error_naming_the_file(table, tmp_path, damage: str) -> None:  # type: ignore[no-untyped-def]
    result = build(table, tmp_path, "IVF32,Flat", shards=2)
    path = os.path.join(os.path.dirname(result.manifest_uri), result.manifest.shards[1].path)
    data = bytearray(open(path, "rb").read())
    if damage == "flip":
        data[len(data) // 2 : len(data) // 2 + 8] = bytes(
            b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8]
        )
    else:
        data = data[: len(data) // 3]
    open(path, "wb").write(bytes(data))
    with pytest.raises(ShardError, match="shard-00001.faiss.*corrupted or truncated"):
        Searcher.from_manifest_uri(result.manifest_uri)


def test_review_photos_are_queries_not_database(table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    reviews = embedding_tables.embedding_table(
        vectors.clustered(50, dim=DIM, point_seed=3), 1, MODEL
    )
    reviews = reviews.set_column(2, "image_index", pa.array([-1] * 50, pa.int16()))
    both = pa.concat_tables([table, reviews])
    result = build(
        both, tmp_path, "Flat", extra_queries=vectors.clustered(20, dim=DIM, point_seed=4)
    )
    assert result.manifest.ntotal == N
    assert (
        result.manifest.validation is not None
        and result.manifest.validation.sample_size == 100 + 35
    )


def test_ivf_shards_merged_or_separate_give_the_same_answers(table, queries, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = build(table, tmp_path, "IVF32,Flat", shards=4)
    with (
        Searcher.from_manifest_uri(result.manifest_uri) as merged,
        Searcher.from_manifest_uri(result.manifest_uri, merge_ivf=False) as separate,
    ):
        assert merged.loaded.merged is not None and separate.loaded.merged is None
        for params in ({"nprobe": 1}, {"nprobe": 8}):
            a, b = merged.search_raw(queries, 10, params), separate.search_raw(queries, 10, params)
            np.testing.assert_allclose(a[0], b[0], atol=1e-5)
            assert (a[1] == b[1]).mean() > 0.99 and (a[2] == b[2]).mean() > 0.99
        single = [merged.search_vectors(queries[i : i + 1], 5)[0] for i in range(3)]  # thread pool
        assert single == separate.search_vectors(queries[:3], 5)
