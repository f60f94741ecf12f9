"""``vsearch build-index``: the current embeddings of the published model -> a validated index.

    Beam 1: embedding partitions -> (file, row group) splits read in parallel -> CoGroupByKey
            with the snapshot's images (its listings' row groups read in parallel, rejected rows
            to the dead letters) -> current rows -> the view, grouped by shard (written once) +
            a bounded seeded sample (Top combiner) + the row count; a bounded seeded sample of
            review photos of current listings (transforms/review_sample.py)
    driver: embed the sampled review photos (extra validation queries)
    driver: choose and train PCA (auto: by measured recall) + the index once, on the sample
    Beam 2: per shard: view -> copy of the trained index -> shard-NNNNN.{faiss,ids.parquet},
            each worker handing back its manifest entry (sha256 of the bytes it wrote)
    Beam 3: per shard: exact top-k of the validation queries -> merged by a combiner
    driver: tune nprobe/efSearch -> validate -> manifest.json (last)

This is faiss' distributed recipe (train once, add per shard; contrib/ondisk.py): the driver holds
only the training sample, the validation queries and their exact answers, never all vectors and
never a structure of the snapshot's size; each worker holds one shard. Shards are written through storage.atomic_writer (never Beam's GCS batch finalisation), so
the same job runs on local files, the loopback GCS server and gs://. Below the target recall the
job fails and no manifest is written, so nothing can be published.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from core import gcs, paths, pointers, runs, storage
from core.catalog import Review
from core.deadletter import clear_dead_letters
from core.runs import METRICS_NAMESPACE, RunSummary
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE, WORKDIR, doc
from index import builder, manifest, shard_plan, source
from index.builder import IndexSettings
from index.source import BatchesFactory
from search.calibrate import calibrate_build
from transforms import current_embeddings, index_view, review_sample
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters

STAGE = "build-index"

# Runs on the written manifest before the run is recorded; returns figures for the summary. The
# no-match calibration (search/calibrate.py) is one: it searches as the service does, which
# lives above this layer, so the stage registry hands it in.


@dataclass(frozen=True)
class BuildIndexSettings:
    catalog: str = field(metadata=CATALOG)  # the day's snapshot decides which listings are current
    workdir: str = field(metadata=WORKDIR)
    date: dt.date = field(metadata=DATE)
    # Its fields are flags too (--factory, --shards, --target-recall, --memory-budget, ...).
    index: IndexSettings = field(default_factory=IndexSettings)
    model_version: str | None = field(
        default=None, metadata=doc("model VERSION (default: models/PUBLISHED)")
    )
    batch_size: int = field(  # ~17 MB of vectors at D=256: large reads, bounded memory
        default=65536, metadata=doc("rows per RecordBatch read from the embedding Parquet")
    )
    build_id: str | None = field(
        default=None, metadata=doc("build id (default: UTC timestamp + random suffix)")
    )
    # Buyer review photos embedded as extra validation queries: they are what shoppers send, and
    # unlike database vectors they are never in the index (0: none).
    review_queries: int = field(
        default=200, metadata=doc("review photos embedded as extra validation queries (0: none)")
    )
    # As embed's: a listing whose photos are in such a bucket is current, not a dead letter.
    allowed_buckets: tuple[str, ...] = field(default=(), metadata=ALLOWED_BUCKETS)


@dataclass(frozen=True)
class BuildIndexResult:
    manifest_uri: str  # validated, not yet published: publish flips indexes/CURRENT to it
    model_version: str
    build_id: str
    recall_at_10: float
    ntotal: int

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> BuildIndexResult:
        extra = summary["extra"]
        return cls(
            str(extra["manifest"]),
            str(extra["model_version"]),
            str(extra["build_id"]),
            float(extra["recall_at_10"]),
            int(summary["ok"]),
        )


def review_photo_queries(workdir: str, version: str, reviews: list[Review]) -> np.ndarray | None:
    """Embeddings of the sampled review photos (``review_sample``: bounded, so the driver may
    hold them); unreadable photos are left out (they are the embed stage's dead letters to
    report, not this stage's)."""
    from core.images import ImageError
    from models.artifact import Embedder

    if not reviews:
        return None
    embedder = Embedder.open(workdir, version)
    decoded = []
    for review in reviews:
        try:
            decoded.append(embedder.decode(storage.read_bytes(review.image_uri)))
        except (storage.StorageError, ImageError):
            continue
    return embedder.embed_decoded(decoded) if decoded else None


# ------------------------------------------------------------------ Beam: the build's jobs


def _count_rejected(record: Any) -> Any:
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "catalog_rejected").inc()
    return record


class BeamBuild:
    """The build's Beam jobs; the driver holds only bounded things (sample, queries, truth).

    1. ``prepare``: current rows (parallel row-group reads joined with the snapshot in Beam, or
       a given batches factory) -> the view, grouped by shard, written once; a bounded seeded
       sample; the row count.
    2. ``add_shards``: per shard, its view -> a copy of the trained index -> shard files; each
       worker hands back its manifest entry (sha256s computed where the bytes were written).
    3. ``ground_truth``: per shard, exact top-k of the validation queries; merged by a combiner.
    """

    def __init__(
        self,
        settings: BuildIndexSettings,
        version: str,
        build_dir: str,
        pipeline_args: list[str] | None,
        batches_factory: BatchesFactory | None = None,
    ) -> None:
        self.settings, self.version, self.build_dir = settings, version, build_dir
        self.view_dir = storage.join(build_dir, index_view.VIEW_DIR)
        self._args = pipeline_args or []
        self._factory = batches_factory
        self.counters: dict[str, int] = {}  # prepare's, for the run summary

    def _pipeline(self) -> beam.Pipeline:
        gcs.anonymous_beam_against_emulator()  # no credential search against a test server
        return beam.Pipeline(options=PipelineOptions(self._args))

    def _rows(self, p: beam.Pipeline) -> beam.PCollection:
        if self._factory is not None:
            factory = self._factory  # tests and benchmarks: an in-memory source, already current
            return (
                p
                | "Start" >> beam.Create([None])
                | "ReadFactory"
                >> beam.FlatMap(
                    lambda _: (
                        r for b in factory() for r in current_embeddings.rows_of(b) if r[2] >= 0
                    )
                )
            )
        s = self.settings
        current = p | "ReadCurrent" >> current_embeddings.ReadCurrentEmbeddings(
            s.workdir, self.version, s.date, s.catalog, s.allowed_buckets, stage=STAGE
        )
        _ = (
            current[DEAD_LETTER_TAG]
            | "CountRejected" >> beam.Map(_count_rejected)
            | "WriteDeadLetters" >> WriteDeadLetters(s.workdir, STAGE, s.date)
        )
        if s.review_queries > 0:
            reviews = review_sample.ReviewSample(
                s.catalog,
                s.date,
                self.review_sample_uri,
                s.review_queries,
                s.index.seed,
                s.allowed_buckets,
            )
            _ = current[current_embeddings.LISTINGS] | "SampleReviews" >> reviews
        return current[current_embeddings.ROWS]

    @property
    def review_sample_uri(self) -> str:
        return storage.join(self.view_dir, review_sample.SAMPLE_FILE)

    def review_sample(self) -> list[Review]:
        """The reviews ``prepare`` sampled (none when it read no snapshot or wants none)."""
        if not storage.exists(self.review_sample_uri):
            return []
        return review_sample.read_sample(self.review_sample_uri)

    def prepare(self) -> source.Sample:
        s = self.settings.index
        num_shards, size = s.shards, s.max_train_size + s.validation_queries
        view_dir, seed, version = self.view_dir, s.seed, self.version
        if self._factory is None:
            clear_dead_letters(self.settings.workdir, STAGE, self.settings.date)  # no stale ones
        p = self._pipeline()
        rows = self._rows(p)
        every_shard = p | "ShardNumbers" >> beam.Create([(n, None) for n in range(num_shards)])
        counts = (
            (
                rows | "ByShard" >> beam.Map(lambda r: (shard_plan.shard_of(r[0], num_shards), r)),
                every_shard,
            )
            | "WithEveryShard" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteView" >> beam.ParDo(index_view.WriteViewShardFn(view_dir, version))
        )
        _ = (
            counts
            | "Count" >> beam.CombineGlobally(sum)
            | "WriteCount"
            >> beam.Map(
                lambda n: storage.write_text(storage.join(view_dir, index_view.COUNT_FILE), str(n))
            )
        )
        _ = (
            rows
            | "Sample"
            >> beam.combiners.Top.Of(
                size, key=functools.partial(index_view.sample_priority, seed), reverse=True
            )
            | "WriteSample" >> beam.Map(index_view.write_sample, view_dir)
        )
        result = p.run()
        result.wait_until_finish()
        self.counters = runs.counters(result)
        n = int(storage.read_text(storage.join(view_dir, index_view.COUNT_FILE)))
        vectors, keys = index_view.read_sample(view_dir)
        if n == 0:
            raise source.IndexBuildError(
                "no embeddings to index (is the model published and embed run?)"
            )
        nq = min(s.validation_queries, max(1, n // 5))  # as index.source.scan holds out
        train = vectors[nq:] if len(vectors) > nq else vectors
        dim = vectors.shape[1]
        return source.Sample(train, vectors[:nq], keys[:nq], np.empty((0, dim), np.float32), n, dim)

    def add_shards(
        self, trained_bytes: bytes, pca_bytes: bytes, build_dir: str, num_shards: int
    ) -> list[manifest.ShardEntry]:
        p = self._pipeline()
        _ = (
            p
            | "Shards" >> beam.Create(list(range(num_shards)))
            | "Spread" >> beam.Reshuffle()
            | "AddAndWriteShard"
            >> beam.ParDo(
                index_view.AddViewShardFn(trained_bytes, pca_bytes, build_dir, self.view_dir)
            )
        )
        p.run().wait_until_finish()
        return index_view.collect_entries(build_dir, num_shards)

    def ground_truth(self, queries: np.ndarray, k: int) -> np.ndarray:
        view_dir = self.view_dir
        p = self._pipeline()

        def write(acc: tuple[np.ndarray, np.ndarray] | None) -> None:
            keys = acc[1] if acc is not None else np.empty((len(queries), 0), dtype=object)
            buf = io.BytesIO()
            np.save(buf, keys.astype(object), allow_pickle=True)
            storage.write_bytes(storage.join(view_dir, index_view.TRUTH_FILE), buf.getvalue())

        _ = (
            p
            | "Shards" >> beam.Create(list(range(self.settings.index.shard_files)))
            | "Spread" >> beam.Reshuffle()
            | "ShardTruth" >> beam.ParDo(index_view.ShardTruthFn(view_dir, queries, k))
            | "Merge" >> beam.CombineGlobally(index_view.MergeTopK(k))
            | "WriteTruth" >> beam.Map(write)
        )
        p.run().wait_until_finish()
        data = storage.read_bytes(storage.join(view_dir, index_view.TRUTH_FILE))
        keys = np.load(io.BytesIO(data), allow_pickle=True)
        if keys.shape[1] < k:  # the whole input holds fewer than k rows
            keys = np.pad(keys, ((0, 0), (0, k - keys.shape[1])), constant_values="")
        return keys  # type: ignore[no-any-return]

    def cleanup(self) -> None:
        index_view.remove_dir(self.view_dir)


# ------------------------------------------------------------------ the stage


def run(
    settings: BuildIndexSettings,
    pipeline_args: list[str] | None = None,
    *,
    batches_factory: BatchesFactory | None = None,
    extra_queries: np.ndarray | None = None,
    calibrate: bool = True,
) -> BuildIndexResult:
    """Build, validate and write one index; writes its run summary, returns the manifest.

    ``batches_factory`` replaces the embedding reader (tests, benchmarks); ``extra_queries`` are
    more validation queries, e.g. review-photo embeddings of the eval split. ``calibrate``
    completes the written manifest with the no-match threshold (``search.calibrate``) before
    the run is recorded; vectors from ``batches_factory`` have no photos and are not calibrated.
    """
    version = (
        settings.model_version
        or pointers.read_pointer(paths.published_model_pointer(settings.workdir)).value
    )
    if not version:
        raise FileNotFoundError(
            f"no published model ({paths.published_model_pointer(settings.workdir)} is missing); "
            "run vsearch train and vsearch gate first, or pass --model-version"
        )
    build_id = settings.build_id or manifest.new_build_id()
    build_dir = paths.index_build_dir(settings.workdir, version, build_id)
    jobs = BeamBuild(settings, version, build_dir, pipeline_args, batches_factory)
    with runs.stopwatch() as t:
        try:
            sample = jobs.prepare()
            if extra_queries is None and batches_factory is None:
                extra_queries = review_photo_queries(
                    settings.workdir, version, jobs.review_sample()
                )
            result = builder.build_index(
                None,
                settings.index,
                build_dir,
                version,
                build_id,
                extra_queries=extra_queries,
                sample=sample,
                add_shards=jobs.add_shards,
                ground_truth=jobs.ground_truth,
            )
        finally:
            jobs.cleanup()
        calibrated: dict[str, Any] = {}
        if calibrate and batches_factory is None:
            calibrated = calibrate_build(
                result.manifest_uri, settings.workdir, settings.catalog, settings.date.isoformat()
            )
    m, v = result.manifest, result.manifest.validation
    assert v is not None
    # Read: the snapshot's images and its rejected listings rows; skipped: images with no
    # embedding row yet (embed dead-lettered them, or has not run for them).
    c = jobs.counters
    skipped, dead = c.get("images_not_embedded", 0), c.get("catalog_rejected", 0)
    summary = RunSummary(
        stage=STAGE,
        date=settings.date.isoformat(),
        read=m.ntotal + skipped + dead,
        ok=m.ntotal,
        dead_lettered=dead,
        skipped=skipped,
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
            # Processes that shared the read of the listings' row groups (0: not Parquet).
            "listings_split_readers": jobs.counters.get("listings_split_readers", 0),
            **calibrated,
        },
    )
    runs.complete(settings.workdir, summary)
    print(f"index manifest: {result.manifest_uri}")
    return BuildIndexResult.from_summary(summary.to_json())
