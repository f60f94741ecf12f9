"""build-index's Beam jobs: the passes over every vector, run per shard on workers.

    Beam 1 (``prepare``): embedding partitions -> (file, row group) splits read in parallel ->
            CoGroupByKey with the snapshot's images (its listings' row groups read in parallel,
            rejected rows to the dead letters) -> current rows -> the view, grouped by shard
            (written once) + a bounded seeded sample (Top combiner) + the row count; a bounded
            seeded sample of review photos of current listings (transforms/review_sample.py)
    Beam 2 (``add_shards``): per shard: view -> copy of the trained index ->
            shard-NNNNN.{faiss,ids.parquet}, each worker handing back its manifest entry (sha256
            of the bytes it wrote)
    Beam 3 (``ground_truth``): per shard: exact top-k of the validation queries -> merged by a
            combiner

``BeamBuild`` is the build's ``ShardWork`` (index/shard_work.py): the driver (index/builder.py)
trains, tunes and validates between these jobs, holding only bounded things. Shards are written
through storage.atomic_writer (never Beam's GCS batch finalisation), so the same job runs on local
files, the loopback GCS server and gs://.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import apache_beam as beam
import numpy as np

from core import runs, storage
from core.catalog import Review
from core.deadletter import clear_dead_letters
from core.runs import METRICS_NAMESPACE
from index import manifest, shard_plan, source
from index.source import BatchesFactory
from pipelines.build_index import STAGE, BuildIndexSettings
from pipelines.stage import run_and_wait, stage_options
from transforms import current_embeddings, index_view, review_sample
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters


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
        self._options = stage_options(STAGE, pipeline_args)  # three jobs, then the day
        self._factory = batches_factory
        self.counters: dict[str, int] = {}  # prepare's, for the run summary

    def _pipeline(self) -> beam.Pipeline:
        return beam.Pipeline(options=self._options)

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
        result = run_and_wait(STAGE, p)
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
        run_and_wait(STAGE, p)
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
            | "Shards" >> beam.Create(list(range(self.settings.index.shards)))
            | "Spread" >> beam.Reshuffle()
            | "ShardTruth" >> beam.ParDo(index_view.ShardTruthFn(view_dir, queries, k))
            | "Merge" >> beam.CombineGlobally(index_view.MergeTopK(k))
            | "WriteTruth" >> beam.Map(write)
        )
        run_and_wait(STAGE, p)
        data = storage.read_bytes(storage.join(view_dir, index_view.TRUTH_FILE))
        keys = np.load(io.BytesIO(data), allow_pickle=True)
        if keys.shape[1] < k:  # the whole input holds fewer than k rows
            keys = np.pad(keys, ((0, 0), (0, k - keys.shape[1])), constant_values="")
        return keys  # type: ignore[no-any-return]

    def cleanup(self) -> None:
        index_view.remove_dir(self.view_dir)
