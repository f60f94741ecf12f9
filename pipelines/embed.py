"""``vsearch embed``: incremental image embeddings with Beam RunInference, written as Parquet.

    ReadCatalog -> JoinKnownKeys (CoGroupByKey on listing_id with the (image_index, sha256)
    pairs of earlier partitions) -> ReadUnlessKnown (each photo's bytes + sha256; a known pair
    is skipped here, before any decoding or inference) -> DecodeImages -> EncodePng ->
    RunInference(KeyedModelHandler) -> ToRows (NaN / zero-norm -> dead letter) -> WriteEmbeddings

Why a CoGroupByKey join and not a side input for the skip: the known keys are one row per image
ever embedded (~100 bytes each; 30 GB at 300M images). A side input would have to fit on every
worker; the join shuffles only keys and URIs (never image bytes, which are read after the join),
so it costs the same shape on a laptop and on Dataflow. The key is listing_id (one element per
listing, known pairs grouped per file) and the comparison on sha256 happens after the read,
because only the bytes tell the sha256.

Publishing: shards are written to a staging folder; only when the bad fraction (dead letters /
images) is within ``max_bad_fraction`` are they moved under the day's partition (same
deterministic names, overwriting) and stale shards of an earlier run of that day removed. A run
that fails the check leaves the partition as it was and its dead letters for inspection.

Idempotence: a run of day D skips only keys of partitions dt < D, and rewrites partition D, so
re-running a day gives the same rows and no duplicates. ``--full`` skips nothing (new model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import read_images
from transforms.deadletter import DEAD_LETTER_TAG, WriteDeadLetters, dead_letter
from transforms.embedding_writer import WriteEmbeddings
from transforms.inference import InferenceFailure, Prediction, keyed_handler
from transforms.progress import LogProgress
from vsearch.core import embeddings, images, paths, runs, storage
from vsearch.core.catalog import listing_images
from vsearch.core.deadletter import DeadLetter, clear_dead_letters
from vsearch.core.runs import METRICS_NAMESPACE, RunSummary

STAGE = "embed"
_log = logging.getLogger(__name__)


class EmbedError(RuntimeError):
    """The run cannot start (no model) or must not publish (too many bad images)."""


@dataclass(frozen=True)
class EmbedSettings:
    catalog: str
    date: dt.date
    workdir: str
    model_version: str | None = None  # None: the published model (models/PUBLISHED)
    full: bool = False  # re-embed everything: the first run of a newly promoted model
    min_batch_size: int = 8  # BatchElements adapts between these two from measured throughput
    max_batch_size: int = 64  # 64 x 224^2 RGB floats = 38 MB: fits any CPU or GPU worker
    max_bad_fraction: float = 0.01  # more dead letters than this means a broken input or model
    num_shards: int = 0  # 0: one Parquet file per ~50k rows
    allowed_buckets: tuple[str, ...] = ()
    large_model: bool = False  # one model copy per machine (GPU workers), not one per process
    intra_op_threads: int = 0  # 0: TensorFlow decides


@dataclass(frozen=True)
class ModelInfo:
    version: str
    uri: str
    dim: int
    image_size: int


class EmbedKey(NamedTuple):
    """What rides along with the image bytes through RunInference."""

    listing_id: str
    image_index: int
    uri: str
    sha256: str


def resolve_model(workdir: str, version: str | None) -> ModelInfo:
    """--model, else the published version; reads config.json for dim and image size."""
    if not version:
        version = storage.read_pointer(paths.published_model_pointer(workdir)).value
        if not version:
            raise EmbedError(
                f"no --model given and no published model at {paths.published_model_pointer(workdir)}; "
                "train and gate a model first, or pass --model VERSION"
            )
    config_uri = storage.join(paths.model_dir(workdir, version), "config.json")
    if not storage.exists(config_uri):
        raise EmbedError(f"model {version} has no config.json at {config_uri}")
    config = json.loads(storage.read_text(config_uri))
    try:
        dim, size = int(config["embedding_dim"]), int(config["image_size"])
    except (KeyError, ValueError) as e:
        raise EmbedError(f"{config_uri} needs integer embedding_dim and image_size: {e}") from e
    return ModelInfo(version, paths.embedder_dir(workdir, version), dim, size)


# ------------------------------------------------------------------ DoFns


def _is_listing_reject(d: DeadLetter) -> bool:
    """Catalog rejections that concern listing photos (review rows are not this stage's input)."""
    keep = not d.error.startswith("reviews:")
    if keep:
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "catalog_rejected").inc()
    return keep


class _ReadUnlessKnown(beam.DoFn):
    """(listing_id, {listing, known}) -> ImageBytes of its photos whose sha256 is not known yet.

    One element per listing, not per photo: the join shuffles ~3x fewer elements, and the known
    (image_index, sha256) pairs of a listing arrive grouped per file. The read is the same as
    ``ReadImageBytes`` (size cap, reasons), fused with the skip so that known sha256s never need
    to travel with image bytes.
    """

    def setup(self) -> None:
        self._images = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images")
        self._skipped = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "skipped_unchanged")

    def process(self, joined: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        _, groups = joined
        known = {pair for pairs in groups["known"] for pair in pairs}
        for listing in groups["listing"]:
            for ref in listing_images(listing):
                self._images.inc()
                try:
                    data = read_images.read_limited(ref.uri, read_images.DEFAULT_MAX_BYTES)
                except (storage.StorageError, ValueError) as e:
                    yield dead_letter(
                        STAGE, f"{ref.kind} image: {e}"[:500], ref.listing_id, ref.uri
                    )
                    continue
                sha = images.sha256_hex(data)
                if (ref.image_index, sha) in known:
                    self._skipped.inc()
                    continue
                yield read_images.ImageBytes(ref, data, sha)


def _encode(decoded: read_images.DecodedImage) -> tuple[EmbedKey, bytes]:
    """The model gets the sanitised pixels as PNG: the same bytes training and query feed it."""
    r = decoded.ref
    return EmbedKey(r.listing_id, int(r.image_index), r.uri, decoded.sha256), images.encode_png(
        decoded.rgb
    )


class _ToRows(beam.DoFn):
    """Model outputs -> contract rows; failures, NaN and zero-norm vectors -> dead letters."""

    def __init__(self, version: str, date: dt.date, created_at: dt.datetime) -> None:
        self._version, self._date, self._created_at = version, date, created_at

    def process(self, keyed: tuple[EmbedKey, PredictionResult]) -> Iterator[Any]:
        key, result = keyed
        p = result.inference
        if isinstance(p, InferenceFailure):
            yield dead_letter(STAGE, p.error, key.listing_id, key.uri)
            return
        assert isinstance(p, Prediction)
        v = p.embedding.astype(np.float64)
        if not np.all(np.isfinite(v)):
            yield dead_letter(STAGE, "embedding has NaN or inf values", key.listing_id, key.uri)
            return
        norm = float(np.linalg.norm(v))
        if norm < 1e-6:
            yield dead_letter(STAGE, "embedding has zero norm", key.listing_id, key.uri)
            return
        yield {
            "listing_id": key.listing_id,
            "image_uri": key.uri,
            "image_index": key.image_index,
            "image_sha256": key.sha256,
            "model_version": self._version,
            # Re-normalised in float64 so that norms are 1 to float32 precision whatever the model.
            "embedding": (v / norm).astype(np.float32),
            "category_pred": p.category,
            "category_score": p.category_score,
            "dt": self._date,
            "created_at": self._created_at,
        }


def _failed_batch_letters(bad: tuple[Any, Any]) -> Iterator[DeadLetter]:
    """RunInference's own failures (a whole batch): one dead letter per image in it."""
    batch, (exc_type, exc_repr, _) = bad
    for key, _ in batch:
        yield dead_letter(STAGE, f"inference failed: {exc_repr}", key.listing_id, key.uri).value


def _count_dead(d: DeadLetter) -> DeadLetter:
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "dead_letter_records").inc()
    return d


# ------------------------------------------------------------------ pipeline


def build(
    p: beam.Pipeline, s: EmbedSettings, model: ModelInfo, key_files: list[str], staging: str
) -> None:
    """Add the embed job's steps to ``p``."""
    from transforms.read_catalog import ReadCatalog

    catalog = p | "ReadCatalog" >> ReadCatalog(s.catalog, s.date, s.allowed_buckets, stage=STAGE)
    listings = catalog["listings"] | "KeyListings" >> beam.Map(lambda x: (x.listing_id, x))
    known = (
        p
        | "KeyFiles" >> beam.Create(key_files)
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadKeys" >> beam.FlatMap(embeddings.iter_listing_keys)
    )
    read = (
        {"listing": listings, "known": known}
        | "JoinKnownKeys" >> beam.CoGroupByKey()
        | "ReadUnlessKnown"
        >> beam.ParDo(_ReadUnlessKnown()).with_outputs(DEAD_LETTER_TAG, main="images")
    )
    decoded = read.images | "DecodeImages" >> read_images.DecodeImages(STAGE, model.image_size)
    handler = keyed_handler(
        model.uri,
        min_batch_size=s.min_batch_size,
        max_batch_size=s.max_batch_size,
        large_model=s.large_model,
        intra_op_threads=s.intra_op_threads,
    )
    predictions, failed = (
        decoded[read_images.MAIN_TAG]
        | "EncodePng" >> beam.Map(_encode)
        | "RunInference" >> RunInference(handler).with_exception_handling()
    )
    _ = predictions | "Progress" >> LogProgress(STAGE, "images embedded")
    created_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rows = predictions | "ToRows" >> beam.ParDo(
        _ToRows(model.version, s.date, created_at)
    ).with_outputs(DEAD_LETTER_TAG, main="rows")
    _ = rows.rows | "WriteEmbeddings" >> WriteEmbeddings(
        s.workdir, model.version, s.date, model.dim, s.num_shards, directory=staging
    )
    _ = (
        (
            catalog[DEAD_LETTER_TAG] | "ListingRejects" >> beam.Filter(_is_listing_reject),
            read[DEAD_LETTER_TAG],
            decoded[DEAD_LETTER_TAG],
            failed.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch_letters),
            rows[DEAD_LETTER_TAG],
        )
        | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.Map(_count_dead)
        | "WriteDeadLetters" >> WriteDeadLetters(s.workdir, STAGE, s.date)
    )


def run(
    settings: EmbedSettings, pipeline_args: list[str] | None = None, test_pipeline: Any = None
) -> RunSummary:
    """Embed the new or changed listing photos of ``settings.date``; returns the run summary."""
    s = settings
    if not 0.0 <= s.max_bad_fraction <= 1.0:
        raise ValueError(f"--max-bad-fraction must be in 0..1, got {s.max_bad_fraction}")
    model = resolve_model(s.workdir, s.model_version)
    key_files = (
        []
        if s.full
        else [
            u
            for _, files in embeddings.files_through(
                s.workdir, model.version, s.date, inclusive=False
            )
            for u in files
        ]
    )
    staging = paths.staging_dir(s.workdir, STAGE, s.date, uuid.uuid4().hex[:12])
    clear_dead_letters(s.workdir, STAGE, s.date)
    with runs.stopwatch() as t:
        p = test_pipeline or beam.Pipeline(
            options=PipelineOptions(default_pipeline_args(pipeline_args))
        )
        build(p, s, model, key_files, staging)
        try:
            result = p.run()
            result.wait_until_finish()
        except BaseException:
            storage.delete_prefix(staging)  # a crashed run leaves no half-written output behind
            raise
    c = runs.counters(result)
    read = c.get("images", 0) + c.get("catalog_rejected", 0)
    embedded, skipped, dead = (
        c.get("embedded", 0),
        c.get("skipped_unchanged", 0),
        c.get("dead_letter_records", 0),
    )
    bad_fraction = dead / read if read else 0.0
    failed = bad_fraction > s.max_bad_fraction
    extra = {
        "model_version": model.version,
        "full": s.full,
        "earlier_files": len(key_files),
        "catalog_rejected": c.get("catalog_rejected", 0),
        "bad_fraction": round(bad_fraction, 6),
        "published": not failed,
        **_distributions(result),
    }
    summary = RunSummary(STAGE, s.date.isoformat(), read, embedded, dead, skipped, t["s"], extra)
    runs.write_summary(s.workdir, summary)
    if failed:
        storage.delete_prefix(staging)
        raise EmbedError(
            f"{dead} of {read} images dead-lettered ({bad_fraction:.2%} > --max-bad-fraction "
            f"{s.max_bad_fraction:.2%}); partition {paths.embeddings_dir(s.workdir, model.version, s.date)} "
            f"left unchanged. Reasons: {paths.deadletter_dir(s.workdir, STAGE, s.date)}"
        )
    publish_partition(staging, paths.embeddings_dir(s.workdir, model.version, s.date))
    return summary


def default_pipeline_args(pipeline_args: list[str] | None) -> list[str]:
    """The caller's Beam flags; with none about the runner, a DirectRunner using every core.

    Two bundle threads let one thread decode and PNG-encode while the other waits on the model
    (TensorFlow releases the GIL), which made the job ~1.5x faster on 2 cores than the
    DirectRunner's single-threaded default; the model is still loaded once per process.
    """
    args = list(pipeline_args or [])
    if any(
        a.startswith(("--runner", "--direct_running_mode", "--direct_num_workers")) for a in args
    ):
        return args
    workers = max(2, min(os.cpu_count() or 1, 8))
    return [*args, "--direct_running_mode=multi_threading", f"--direct_num_workers={workers}"]


def publish_partition(staging: str, partition: str) -> None:
    """Move staged shards under the partition (overwriting same names), then drop stale ones."""
    staged = [u for u in storage.list_prefix(staging) if u.endswith(".parquet")]
    names = {storage.basename(u) for u in staged}
    for u in staged:
        storage.rename(u, storage.join(partition, storage.basename(u)))
    stale = [u for u in storage.list_prefix(partition) if storage.basename(u) not in names]
    storage.delete(stale)
    storage.delete_prefix(staging)


def _distributions(result: Any) -> dict[str, Any]:
    """Batch sizes and inference latency (Beam distributions) for the run summary."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, Any] = {}
    try:
        dists = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))[
            "distributions"
        ]
    except Exception:  # some runners do not report distributions
        return out
    for d in dists:
        v = d.committed
        if v is None or not v.count:
            continue
        out[d.key.metric.name] = {
            "count": v.count,
            "min": v.min,
            "max": v.max,
            "mean": round(v.mean, 2),
        }
    return out


def parse_args(argv: list[str]) -> tuple[EmbedSettings, list[str]]:
    ap = argparse.ArgumentParser(
        prog="vsearch embed",
        description="Embed the new or changed listing photos of a day with the published model.",
        epilog="Other flags go to Beam (e.g. --runner=DataflowRunner, --direct_num_workers=4).",
    )
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--date", required=True, type=paths.parse_date)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--model", default=None, help="model VERSION (default: models/PUBLISHED)")
    ap.add_argument("--full", action="store_true", help="re-embed everything (after a new model)")
    ap.add_argument(
        "--min-batch-size", type=int, default=EmbedSettings.min_batch_size, help="%(default)s"
    )
    ap.add_argument(
        "--max-batch-size",
        type=int,
        default=EmbedSettings.max_batch_size,
        help="BatchElements adapts between min and max (default %(default)s)",
    )
    ap.add_argument(
        "--max-bad-fraction",
        type=float,
        default=EmbedSettings.max_bad_fraction,
        help="fail without publishing when more images than this are dead-lettered (default %(default)s)",
    )
    ap.add_argument(
        "--num-shards", type=int, default=0, help="Parquet files (0: one per ~50k rows)"
    )
    ap.add_argument("--allowed-bucket", action="append", default=[], dest="allowed_buckets")
    ap.add_argument("--large-model", action="store_true", help="one model copy per machine (GPU)")
    ap.add_argument(
        "--intra-op-threads", type=int, default=0, help="TensorFlow threads (0: TF decides)"
    )
    a, beam_args = ap.parse_known_args(argv)
    s = EmbedSettings(
        catalog=a.catalog,
        date=a.date,
        workdir=a.workdir,
        model_version=a.model,
        full=a.full,
        min_batch_size=a.min_batch_size,
        max_batch_size=a.max_batch_size,
        max_bad_fraction=a.max_bad_fraction,
        num_shards=a.num_shards,
        allowed_buckets=tuple(a.allowed_buckets),
        large_model=a.large_model,
        intra_op_threads=a.intra_op_threads,
    )
    return s, beam_args


def main(argv: list[str]) -> int:
    settings, beam_args = parse_args(argv)
    try:
        run(settings, beam_args)
    except EmbedError as e:
        print(f"vsearch embed: error: {e}", flush=True)
        return 1
    return 0


if (
    __name__ == "__main__"
):  # the Airflow Beam operator runs `python -m pipelines.embed --flag=value ...`
    import sys

    sys.exit(main(sys.argv[1:]))
