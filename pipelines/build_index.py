"""``vsearch build-index``: the current embeddings of the published model -> a validated index.

The stage's face: its settings (light: the CLI builds ``--help`` from them without loading Beam,
TensorFlow or faiss), its result, and ``run``. The steps are index/builder.py's (scan, train once,
add per shard, validate, write the manifest); the passes over every vector run as Beam jobs
(pipelines/build_index_job.py):

    Beam 1: current embeddings (joined with the day's snapshot) -> the view, grouped by shard +
            a bounded seeded sample + the row count; a bounded sample of review photos
    driver: embed the sampled review photos (extra validation queries)
    driver: choose and train PCA (auto: by measured recall) + the index once, on the sample
    Beam 2: per shard: view -> copy of the trained index -> shard files + manifest entry
    Beam 3: per shard: exact top-k of the validation queries -> merged by a combiner
    driver: tune nprobe/efSearch -> validate -> manifest.json (last)
    driver: the no-match calibration (search/calibrate.py) completes the manifest

This is faiss' distributed recipe (train once, add per shard; contrib/ondisk.py): the driver holds
only the training sample, the validation queries and their exact answers, never all vectors and
never a structure of the snapshot's size; each worker holds one shard. Below the target recall the
job fails and no manifest is written, so nothing can be published.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import paths, results, runs, storage
from core.results import SUMMARY_KEY
from core.runs import RunSummary
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE, WORKDIR, doc
from index.build_settings import IndexSettings

if TYPE_CHECKING:
    import numpy as np

    from core.catalog import Review
    from index.source import BatchesFactory

STAGE = "build-index"


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
    # Its run summary names the manifest "manifest" and counts the vectors as "ok".
    manifest_uri: str = field(metadata={SUMMARY_KEY: "manifest"})  # publish flips CURRENT to it
    model_version: str
    build_id: str
    recall_at_10: float
    ntotal: int = field(metadata={SUMMARY_KEY: "ok"})


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
    from core import pointers
    from index import builder, manifest
    from pipelines.build_index_job import BeamBuild  # Beam: loaded when the stage runs
    from search.calibrate import calibrate_build

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
            result = builder.build(
                sample,
                jobs,  # the passes over every vector run in Beam
                settings.index,
                build_dir,
                version,
                build_id,
                extra_queries=extra_queries,
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
    return results.from_summary(BuildIndexResult, summary.to_json())
