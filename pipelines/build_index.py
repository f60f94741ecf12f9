"""``vsearch build-index``: the current embeddings of the published model -> a validated index.

    driver: scan (count, sample) -> train PCA (if it reduces) + index once -> pca.bin
    Beam:   ReadEmbeddings -> SplitByShard (stable hash of listing_id) -> GroupByKey(shard)
            -> AddAndWriteShard (copy of the trained index + this shard's vectors)
            -> WORKDIR/indexes/VERSION/BUILD_ID/shard-NNNNN.{faiss,ids.parquet}
    driver: exact ground truth -> tune nprobe/efSearch -> validate -> manifest.json (last)

This is faiss' distributed recipe (train once, add per shard; contrib/ondisk.py): the driver holds
only the training sample and the validation queries, never all vectors; each worker holds one
shard. Shards are written through storage.atomic_writer (never Beam's GCS batch finalisation), so
the same job runs on local files, the loopback GCS server and gs://. Below the target recall the
job fails and no manifest is written, so nothing can be published.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from index import builder, factory, manifest, sharding, shards, source, training
from index.builder import IndexSettings
from index.shards import AddShards
from index.source import BatchesFactory
from vsearch.core import paths, runs, storage
from vsearch.core.runs import METRICS_NAMESPACE, RunSummary

STAGE = "build-index"


@dataclass(frozen=True)
class BuildIndexSettings:
    catalog: str  # catalog root: the day's snapshot decides which listings are current
    workdir: str
    date: dt.date
    index: IndexSettings = field(default_factory=IndexSettings)
    model_version: str | None = None  # None: models/PUBLISHED
    batch_size: int = 65536  # rows per RecordBatch read from the embedding Parquet
    build_id: str | None = None  # None: UTC timestamp + random suffix
    # Buyer review photos embedded as extra validation queries: they are what shoppers send, and
    # unlike database vectors they are never in the index (0: none).
    review_queries: int = 200


def review_photo_queries(settings: BuildIndexSettings, version: str) -> np.ndarray | None:
    """Embeddings of up to ``settings.review_queries`` review photos of the day's snapshot.

    A deterministic spread over the reviews of current listings; unreadable photos are left out
    (they are the embed stage's dead letters to report, not this stage's).
    """
    from models.artifact import Embedder
    from vsearch.core.images import ImageError
    from vsearch.core.snapshot import read_snapshot

    if settings.review_queries <= 0:
        return None
    snapshot = read_snapshot(settings.catalog, settings.date)
    current = {listing.listing_id for listing in snapshot.listings}
    reviews = sorted(
        (r for r in snapshot.reviews if r.listing_id in current), key=lambda r: r.review_id
    )
    step = max(1, len(reviews) // settings.review_queries)
    embedder = Embedder.open(settings.workdir, version)
    decoded = []
    for review in reviews[::step][: settings.review_queries]:
        try:
            decoded.append(embedder.decode(storage.read_bytes(review.image_uri)))
        except (storage.StorageError, ImageError):
            continue
    return embedder.embed_decoded(decoded) if decoded else None


# ------------------------------------------------------------------ Beam: add per shard


class _ReadEmbeddingsFn(beam.DoFn):
    """Stream the current embeddings (database rows only) as RecordBatches."""

    def __init__(self, batches_factory: BatchesFactory) -> None:
        self._factory = batches_factory

    def process(self, _: object) -> Iterator[pa.RecordBatch]:
        for batch, _vectors in source.iter_database(self._factory):
            yield batch


class _SplitByShardFn(beam.DoFn):
    def __init__(self, num_shards: int) -> None:
        self._num_shards = num_shards

    def setup(self) -> None:
        self._rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_sharded")

    def process(self, batch: pa.RecordBatch) -> Iterator[tuple[int, pa.RecordBatch]]:
        self._rows.inc(batch.num_rows)
        yield from shards.shard_tables([batch], self._num_shards)


class _AddAndWriteShardFn(beam.DoFn):
    """One shard: a copy of the trained index, its vectors added, written with its id map."""

    def __init__(self, trained_bytes: bytes, pca_bytes: bytes, build_dir: str) -> None:
        self._trained_bytes, self._pca_bytes, self._build_dir = trained_bytes, pca_bytes, build_dir

    def setup(self) -> None:
        # Heavy objects are rebuilt once per worker, not per element.
        self._trained = training.index_from_bytes(self._trained_bytes)
        self._pca = training.pca_from_bytes(self._pca_bytes)
        self._added = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "vectors_added")

    def process(self, element: tuple[int, Sequence[pa.RecordBatch | None]]) -> Iterator[int]:
        shard_no, parts = element
        batches = [b for b in parts if b is not None]
        if batches:
            table = pa.Table.from_batches(batches)
            index, ids = shards.fill_shard(self._trained, self._pca, table, shard_no)
        else:  # an empty shard is still written, so every shard the manifest lists exists
            index, ids = self._trained, shards.EMPTY_IDS
        shards.write_shard(self._build_dir, shard_no, index, ids)
        self._added.inc(int(index.ntotal))
        yield shard_no


def add_shards_with_beam(
    batches_factory: BatchesFactory,
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> AddShards:
    """An ``add_shards`` for builder.build_index that runs the add step as a Beam job."""

    def run(
        trained_bytes: bytes, pca_bytes: bytes, build_dir: str, num_shards: int
    ) -> list[manifest.ShardEntry]:
        p = test_pipeline or beam.Pipeline(options=PipelineOptions(pipeline_args or []))
        every_shard = p | "ShardNumbers" >> beam.Create([(s, None) for s in range(num_shards)])
        rows = (
            p
            | "Start" >> beam.Create([None])
            | "ReadEmbeddings" >> beam.ParDo(_ReadEmbeddingsFn(batches_factory))
            | "SplitByShard" >> beam.ParDo(_SplitByShardFn(num_shards))
        )
        _ = (
            (every_shard, rows)
            | "WithEveryShard" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "AddAndWriteShard"
            >> beam.ParDo(_AddAndWriteShardFn(trained_bytes, pca_bytes, build_dir))
        )
        p.run().wait_until_finish()
        return [shard_entry(build_dir, s) for s in range(num_shards)]

    return run


def shard_entry(build_dir: str, shard_no: int) -> manifest.ShardEntry:
    """The manifest entry of a written shard: sha256 of its bytes as stored, row count of its ids."""
    name, ids_name = sharding.shard_file(shard_no), sharding.shard_ids_file(shard_no)
    uri = storage.join(build_dir, name)
    h = hashlib.sha256()
    try:
        with storage.open_read(uri) as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        ntotal = pq.ParquetFile(
            storage.open_read(storage.join(build_dir, ids_name))
        ).metadata.num_rows
    except Exception as e:
        raise source.IndexBuildError(
            f"shard {shard_no} was not written completely ({uri}): {e}"
        ) from e
    return manifest.ShardEntry(name, h.hexdigest(), int(ntotal), ids_name)


# ------------------------------------------------------------------ the stage


def current_embeddings(settings: BuildIndexSettings, model_version: str) -> BatchesFactory:
    """A picklable factory over the day's current embeddings (the embed stage's reader)."""
    from vsearch.core import embeddings  # lazily: only this stage needs the catalog join

    keys = embeddings.snapshot_images(settings.catalog, settings.date)  # read the snapshot once
    return functools.partial(
        embeddings.read_current_embeddings,
        settings.catalog,
        settings.workdir,
        settings.date,
        model_version,
        settings.batch_size,
        image_keys=keys,
    )


def run(
    settings: BuildIndexSettings,
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    batches_factory: BatchesFactory | None = None,
    extra_queries: np.ndarray | None = None,
) -> RunSummary:
    """Build, validate and write one index; returns (and writes) the run summary.

    ``batches_factory`` replaces the embedding reader (tests, benchmarks); ``extra_queries`` are
    more validation queries, e.g. review-photo embeddings of the eval split.
    """
    version = (
        settings.model_version
        or storage.read_pointer(paths.published_model_pointer(settings.workdir)).value
    )
    if not version:
        raise FileNotFoundError(
            f"no published model ({paths.published_model_pointer(settings.workdir)} is missing); "
            "run vsearch train and vsearch gate first, or pass --model-version"
        )
    build_id = settings.build_id or manifest.new_build_id()
    build_dir = paths.index_build_dir(settings.workdir, version, build_id)
    source = batches_factory or current_embeddings(settings, version)
    if extra_queries is None and batches_factory is None:
        extra_queries = review_photo_queries(settings, version)
    with runs.stopwatch() as t:
        result = builder.build_index(
            source,
            settings.index,
            build_dir,
            version,
            build_id,
            extra_queries=extra_queries,
            add_shards=add_shards_with_beam(source, pipeline_args, test_pipeline),
        )
    m, v = result.manifest, result.manifest.validation
    assert v is not None
    summary = RunSummary(
        stage=STAGE,
        date=settings.date.isoformat(),
        read=m.ntotal,
        ok=m.ntotal,
        dead_lettered=0,
        wall_s=t["s"],
        extra={
            "manifest": result.manifest_uri,
            "model_version": version,
            "build_id": build_id,
            "factory": m.factory,
            "dim": m.dim,
            "shards": len(m.shards),
            "search_params": m.search_params,
            "recall_at_10": v.recall_at_10,
            "latency_ms_p50": v.latency_ms_p50,
            "latency_ms_p99": v.latency_ms_p99,
            "validation_queries": v.sample_size,
        },
    )
    runs.write_summary(settings.workdir, summary)
    return summary


def parse_args(argv: Sequence[str]) -> tuple[BuildIndexSettings, list[str]]:
    d = IndexSettings()
    p = argparse.ArgumentParser(
        prog="vsearch build-index",
        description="Train PCA + a faiss index on a sample of the current embeddings, add them "
        "per shard as a Beam job, validate recall@10 against exact search, write the manifest. "
        "Unknown flags are Beam pipeline options.",
    )
    p.add_argument("--catalog", required=True, help="catalog root URI (the day's snapshot)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--date", required=True, type=paths.parse_date, help="YYYY-MM-DD")
    p.add_argument("--model-version", help="default: models/PUBLISHED")
    p.add_argument(
        "--factory", default=d.factory, help="faiss index_factory string or auto (default)"
    )
    p.add_argument("--shards", type=int, default=d.shards)
    p.add_argument("--target-recall", type=float, default=d.target_recall)
    p.add_argument("--memory-budget", default="16G", help="index memory budget for auto, e.g. 16G")
    p.add_argument("--pca-dim", type=int, default=d.pca_dim, help="0: auto (keep 99%% energy)")
    p.add_argument("--max-train-size", type=int, default=d.max_train_size)
    p.add_argument("--validation-queries", type=int, default=d.validation_queries)
    p.add_argument("--build-id", help="default: UTC timestamp + random suffix")
    p.add_argument(
        "--review-queries",
        type=int,
        default=BuildIndexSettings.review_queries,
        help="review photos embedded as extra validation queries (0: none)",
    )
    args, pipeline_args = p.parse_known_args(list(argv))
    index_settings = IndexSettings(
        factory=args.factory,
        shards=args.shards,
        target_recall=args.target_recall,
        memory_budget_bytes=factory.parse_memory(args.memory_budget),
        pca_dim=args.pca_dim,
        max_train_size=args.max_train_size,
        validation_queries=args.validation_queries,
    )
    settings = BuildIndexSettings(
        catalog=args.catalog,
        workdir=args.workdir,
        date=args.date,
        index=index_settings,
        model_version=args.model_version,
        build_id=args.build_id,
        review_queries=args.review_queries,
    )
    return settings, pipeline_args


def main(argv: Sequence[str] | None = None) -> int:
    settings, pipeline_args = parse_args(sys.argv[1:] if argv is None else argv)
    summary = run(settings, pipeline_args)
    print(f"index manifest: {summary.extra['manifest']}")
    return 0


if __name__ == "__main__":  # the Airflow Beam operator runs `python -m MODULE --flag=value ...`
    import sys as _sys

    _sys.exit(main(_sys.argv[1:]))
