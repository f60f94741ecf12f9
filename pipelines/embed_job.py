"""The embed stage's Beam job: which photos to read, reading, decoding, inference, writing.

    ReadListings (transforms/read_listing_tables.py: Arrow tables of valid listings, no object
    per listing) -> PhotosToRead (transforms/change_detection.py: the catalog's photos, folder
    listings, the earlier partitions' keys and the earlier runs' metadata state, joined as Arrow
    tables in hash buckets; never a byte of an unchanged photo, never an element per unchanged
    photo) -> ReadPhotos (read and hash; a sha256 the slot already has is skipped before any
    decoding) -> DecodeImages (the safe Pillow decoder, once per photo) -> KeyPixels ->
    RunInference (KeyedModelHandler: uint8 pixels through the model's pixel signature, then each
    vector re-normalised or rejected, transforms/inference.py) -> ToRows -> WriteEmbeddings
    (+ WriteState: this run's state snapshot, metadata key -> sha256 of every photo that has an
    embedding row: those skipped, those recognised after the read, those embedded today)

Why joins and not a side input for the skip: the known keys are one row per image ever embedded
(~100 bytes each; 30 GB at 300M images). A side input would have to fit on every worker; the
bucketed joins shuffle only keys and URIs (never image bytes, which are read after the join), so
they cost the same shape on a laptop and on Dataflow.

Dead letters: every step that can reject a photo has a dead-letter output, and after the model
that output is RunInference's own (``with_exception_handling``): a failed model call dead-letters
its batch, a NaN or zero-norm vector its photo alone. The job writes the files to a staging
folder; ``pipelines/embed.py`` decides whether they become the day's partition.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference, RunInferenceDLQ

from core import images, paths, storage
from core.catalog import ImageRef, catalog_name
from core.deadletter import DeadLetter
from core.runs import METRICS_NAMESPACE
from models import artifact
from pipelines.embed import STAGE, EmbedSettings
from pipelines.embed_commit import Staging
from pipelines.embed_plan import SkipPlan
from pipelines.stage import BeamRun, run_pipeline
from transforms import read_images
from transforms.change_detection import PhotosToRead, PhotoToRead
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters, dead_letter
from transforms.embedding_writer import WriteEmbeddings, WriteKeptState, WriteState
from transforms.inference import Prediction, keyed_handler
from transforms.progress import LogProgress

# Each model batch runs as two calls at once: one call leaves CPU cores idle (the model alone
# embeds ~20% more photos a second with 2 callers than with 1 on 2 cores; not measured on a GPU).
MODEL_CALLS_AT_ONCE = 2
STATE_TAG = "state"


class EmbedKey(NamedTuple):
    """What rides along with the image bytes through RunInference."""

    listing_id: str
    image_index: int
    uri: str
    sha256: str
    meta_key: str  # "" when the photo has none (then no state row is written)


def run_job(
    s: EmbedSettings,
    model: artifact.ModelConfig,
    plan: SkipPlan,
    staging: Staging,
    buckets: int,
    pipeline_args: list[str],
    test_pipeline: beam.Pipeline | None = None,
    on_failure: Callable[[], None] | None = None,
) -> tuple[BeamRun, dict[str, Any]]:
    """Run the job (``build``) and return it with its distributions (batch sizes, inference
    latency) for the run summary; ``on_failure`` cleans up if the job raises."""
    job = run_pipeline(
        STAGE,
        s.workdir,
        s.date,
        lambda p: build(p, s, model, plan, staging, buckets),
        pipeline_args,
        test_pipeline,
        on_failure=on_failure,
    )
    return job, _distributions(job.result)


def build(
    p: beam.Pipeline,
    s: EmbedSettings,
    model: artifact.ModelConfig,
    plan: SkipPlan,
    staging: Staging,
    buckets: int,
) -> None:
    """Add the embed job's steps to ``p``: the photos ``plan`` does not skip are embedded into
    ``staging.rows`` and this run's state snapshot goes to ``staging.state``; ``buckets`` is the
    change detection's hash bucket count (``change_detection.buckets_for``)."""
    from transforms.read_listing_tables import ReadListingTables

    catalog = p | "ReadListings" >> ReadListingTables(
        s.catalog, s.date, s.allowed_buckets, stage=STAGE, buckets=buckets
    )
    to_read, kept = catalog["listings"] | "PhotosToRead" >> PhotosToRead(
        plan.key_files,
        plan.state_files,
        buckets,
        list_objects=True,  # every photo gets its metadata key: today's state snapshot needs it
        state_checked=plan.checked,
    )
    read = to_read | "ReadPhotos" >> beam.ParDo(_ReadPhoto()).with_outputs(
        DEAD_LETTER_TAG, STATE_TAG, main="images"
    )
    decoded = read.images | "DecodeImages" >> read_images.DecodeImages(
        STAGE, model.image_size, threads=s.decode_threads
    )
    handler = keyed_handler(
        paths.embedder_dir(s.workdir, model.version),
        min_batch_size=s.min_batch_size,
        max_batch_size=s.max_batch_size,
        large_model=s.large_model,
        intra_op_threads=s.intra_op_threads,
        concurrent_calls=MODEL_CALLS_AT_ONCE,
    )
    embedded, failed = (
        decoded[read_images.MAIN_TAG]
        | "KeyPixels" >> beam.Map(_keyed_pixels)
        | "RunInference" >> RunInference(handler).with_exception_handling()
    )
    _ = embedded | "Progress" >> LogProgress(STAGE, "images embedded")
    created_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rows = embedded | "ToRows" >> beam.ParDo(
        _ToRows(model.version, created_at, s.catalog)
    ).with_outputs(STATE_TAG, main="rows")
    _ = rows.rows | "WriteEmbeddings" >> WriteEmbeddings(
        s.workdir, model.version, s.date, model.embedding_dim, s.num_shards, directory=staging.rows
    )
    _ = (
        (read[STATE_TAG], rows[STATE_TAG])
        | "StateRows" >> beam.Flatten()
        | "WriteState" >> WriteState(staging.state, buckets)
    )
    _ = kept | "WriteKeptState" >> beam.ParDo(WriteKeptState(staging.state, buckets))
    _ = (
        (
            catalog[DEAD_LETTER_TAG] | "CatalogRejects" >> beam.Map(_count_catalog_reject),
            read[DEAD_LETTER_TAG],
            decoded[DEAD_LETTER_TAG],
            *_inference_dead_letters(failed),
        )
        | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.Map(_count_dead)
        | "WriteDeadLetters" >> WriteDeadLetters(s.workdir, STAGE, s.date)
    )


# ------------------------------------------------------------------ steps


class _ReadPhoto(beam.DoFn):
    """PhotoToRead -> ImageBytes, unless its bytes hash to a sha256 the slot already has.

    Same size cap and dead-letter reasons as ``ReadImageBytes``. A photo read under a metadata
    key gets a state row: here when its sha256 is known (``state``), else from ``_ToRows`` once
    its embedding row is made (the key rides along as ``carry``), so a photo dead-lettered after
    the read is read again the next day rather than remembered.
    """

    def setup(self) -> None:
        counter = beam.metrics.Metrics.counter
        self._skipped = counter(METRICS_NAMESPACE, "skipped_unchanged")
        self._reads = counter(METRICS_NAMESPACE, "images_read")

    def process(self, photo: PhotoToRead) -> Iterator[Any]:
        self._reads.inc()
        try:
            data = read_images.read_limited(photo.uri, read_images.DEFAULT_MAX_BYTES)
        except (storage.StorageError, ValueError) as e:
            yield dead_letter(STAGE, f"listing image: {e}"[:500], photo.listing_id, photo.uri)
            return
        sha = images.sha256_hex(data)
        if sha in photo.known_sha256:
            self._skipped.inc()  # new metadata, same bytes: the embedding row already exists
            if photo.meta_key:
                state = _state_row(
                    photo.listing_id, photo.image_index, photo.uri, photo.meta_key, sha
                )
                yield beam.pvalue.TaggedOutput(STATE_TAG, state)
            return
        ref = ImageRef(photo.listing_id, photo.image_index, photo.uri, "listing")
        yield read_images.ImageBytes(ref, data, sha, photo.meta_key)


def _state_row(
    listing_id: str, image_index: int, uri: str, meta_key: str, sha: str
) -> dict[str, Any]:
    return {
        "listing_id": listing_id,
        "image_index": image_index,
        "image_uri": uri,
        "meta_key": meta_key,
        "image_sha256": sha,
    }


def _keyed_pixels(decoded: read_images.DecodedImage) -> tuple[EmbedKey, np.ndarray]:
    """The model gets the sanitised pixels themselves, through its pixel signature."""
    r = decoded.ref
    return EmbedKey(
        r.listing_id, int(r.image_index), r.uri, decoded.sha256, decoded.carry
    ), decoded.rgb


class _ToRows(beam.DoFn):
    """(key, unit-norm prediction) -> a contract row, and a ``state`` row for a photo read under
    a metadata key. Nothing is rejected here: RunInference already dead-lettered the failures."""

    def __init__(self, version: str, created_at: dt.datetime, catalog: str) -> None:
        self._version, self._created_at, self._catalog = version, created_at, catalog

    def process(self, keyed: tuple[EmbedKey, Prediction]) -> Iterator[Any]:
        key, p = keyed
        yield {
            "listing_id": key.listing_id,
            "image_uri": catalog_name(key.uri, self._catalog),  # as the catalog names it
            "image_index": key.image_index,
            "image_sha256": key.sha256,
            "model_version": self._version,
            "embedding": p.embedding,
            "category_pred": p.category,
            "category_score": p.category_score,
            "created_at": self._created_at,
        }
        if key.meta_key:  # the photo has its row: remember its key for tomorrow's skip
            state = _state_row(key.listing_id, key.image_index, key.uri, key.meta_key, key.sha256)
            yield beam.pvalue.TaggedOutput(STATE_TAG, state)


def _inference_dead_letters(failed: RunInferenceDLQ) -> list[beam.PCollection]:
    """RunInference's dead-letter output as DeadLetter records, one per photo: a failed model
    call gives one for each photo of its batch, a rejected vector one for its photo."""
    rejected = [
        bad | f"RejectedEmbeddings{i}" >> beam.Map(_rejected_letter)
        for i, bad in enumerate(failed.failed_postprocessing)
    ]
    return [failed.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch_letters)] + (
        rejected
    )


def _failed_batch_letters(bad: tuple[Any, Any]) -> Iterator[DeadLetter]:
    """A model call that raised (``failed_inferences``): one dead letter per photo of its batch."""
    batch, (_, exc_repr, _) = bad
    for key, _ in batch:
        yield dead_letter(STAGE, f"inference failed: {exc_repr}", key.listing_id, key.uri).value


def _rejected_letter(bad: tuple[Any, Any]) -> DeadLetter:
    """A photo whose vector the postprocess step rejected (``failed_postprocessing``); the
    reason is the exception's repr, which for ``RejectedEmbedding`` is its message."""
    (key, _), (_, exc_repr, _) = bad
    return dead_letter(STAGE, exc_repr, key.listing_id, key.uri).value


def _count_catalog_reject(d: DeadLetter) -> DeadLetter:
    """A listing row the catalog reader rejected (embed reads no review rows)."""
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "catalog_rejected").inc()
    return d


def _count_dead(d: DeadLetter) -> DeadLetter:
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "dead_letter_records").inc()
    return d


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
