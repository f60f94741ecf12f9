"""The embed stage's Beam job: which photos to read, reading, decoding, inference, writing.

    ReadListings (transforms/read_listing_tables.py: Arrow tables of valid listings, no object
    per listing) -> PhotosToRead (transforms/change_detection.py: the catalog's photos, folder
    listings, the earlier partitions' keys and the earlier runs' metadata state, joined as Arrow
    tables in hash buckets; never a byte of an unchanged photo, never an element per unchanged
    photo) -> Batch (model batches of photos to read) -> ReadPhotos (read and hash; a sha256 the
    slot already has is skipped before any decoding; else the safe Pillow decoder, once per
    photo; all three in threads ahead of the model step) ->
    Inference (transforms/pipelined_inference.py: batches of uint8 pixels through the model's
    pixel signature, the next batch's call in flight; each batch's vectors re-normalised or
    rejected and made into one Arrow table of contract rows, ``_BatchRows``) -> WriteEmbeddings
    (+ WriteState: this run's state snapshot, metadata key -> sha256 of every photo that has an
    embedding row: those skipped, those recognised after the read, those embedded today)

From the batching before the read to the rows, a batch of photos is one element (after the model,
an Arrow table), not one per photo: at 112k
photos on 2 cores, Beam's per-photo steps and the pickled row dicts of the shard shuffle took
CPU from the model (BENCHMARKS.md, "Embed job").

Why joins and not a side input for the skip: the known keys are one row per image ever embedded
(~100 bytes each; 30 GB at 300M images). A side input would have to fit on every worker; the
bucketed joins shuffle only keys and URIs (never image bytes, which are read after the join), so
they cost the same shape on a laptop and on Dataflow.

Dead letters: every step that can reject a photo has a dead-letter output; after the model a
failed model call dead-letters its batch, a NaN or zero-norm vector its photo alone. The job
writes the files to a staging folder; ``pipelines/embed.py`` decides whether they become the day's partition.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from core import embeddings, images, paths, storage
from core.catalog import ImageRef, catalog_name
from core.deadletter import DeadLetter
from core.runs import METRICS_NAMESPACE
from models import artifact
from pipelines.embed import STAGE, EmbedSettings
from pipelines.embed_commit import Staging
from pipelines.embed_plan import SkipPlan
from pipelines.job_record import JobRecord
from pipelines.stage import BeamRun, run_pipeline
from transforms import read_images
from transforms.change_detection import PhotosToRead, PhotoToRead
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters, dead_letter
from transforms.embedding_writer import WriteEmbeddings, WriteKeptState, WriteState, state_table
from transforms.inference import EmbedderModelHandler, Prediction, unit_vectors
from transforms.job_counts import COUNTS_TAG, CountAs, SumAs, WriteJobCounts, tally
from transforms.lookahead import LookaheadDoFn
from transforms.packed_table import PackedTable
from transforms.pipelined_inference import (
    FAILED_CALLS,
    FAILED_POSTPROCESSING,
    Pairs,
    PipelinedInference,
    Postprocessed,
)
from transforms.progress import LogProgress

# Two batches' calls at once: the next batch's call runs while the bundle's thread emits this
# one's rows and gathers the batch after (transforms/pipelined_inference.py; on 2 cores 0.80 ->
# see BENCHMARKS.md "Embed job"; on a GPU it overlaps the host's work with the device's).
MODEL_CALLS_IN_FLIGHT = 2
# Model batches are merged into tables of this many rows before the shard and state shuffles:
# each table that crosses a shuffle costs a pack, an unpack and a Beam element (12 us a row in
# tables of 64 rows, 4.4 us in tables of 4,096; BENCHMARKS.md "Embed job"). ~4 MB of vectors.
MERGED_ROWS = 4096
STATE_TAG = "state"


class EmbedKey(NamedTuple):
    """What rides along with a photo's pixels through the inference step."""

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
    record: JobRecord,
    pipeline_args: list[str],
    test_pipeline: beam.Pipeline | None = None,
    on_failure: Callable[[], None] | None = None,
) -> tuple[BeamRun, dict[str, Any]]:
    """Run (or, for a template launch, only describe) the job (``build``): it writes into
    ``staging`` and then ``record``'s counts file. Returns it with its distributions (batch
    sizes, inference latency) for the run summary; ``on_failure`` cleans up if the job raises."""
    job = run_pipeline(
        STAGE,
        s.workdir,
        s.date,
        lambda p: build(p, s, model, plan, staging, buckets, record),
        pipeline_args,
        test_pipeline,
        on_failure=on_failure,
        finishes_later=True,
    )
    return job, {} if job.described else _distributions(job.result)


def build(
    p: beam.Pipeline,
    s: EmbedSettings,
    model: artifact.ModelConfig,
    plan: SkipPlan,
    staging: Staging,
    buckets: int,
    record: JobRecord,
) -> None:
    """Add the embed job's steps to ``p``: the photos ``plan`` does not skip are embedded into
    ``staging.rows`` and this run's state snapshot goes to ``staging.state``; ``buckets`` is the
    change detection's hash bucket count (``change_detection.buckets_for``). Last, the job's
    counts go to ``record``'s counts file."""
    from transforms.read_listing_tables import ReadListingTables

    catalog = p | "ReadListings" >> ReadListingTables(
        s.catalog, s.date, s.allowed_buckets, stage=STAGE, buckets=buckets
    )
    selected = catalog["listings"] | "PhotosToRead" >> PhotosToRead(
        plan.key_files,
        plan.state_files,
        buckets,
        list_objects=True,  # every photo gets its metadata key: today's state snapshot needs it
        state_checked=plan.checked,
    )
    to_read, kept = selected.to_read, selected.kept
    model_uri = paths.embedder_dir(s.workdir, model.version)
    handler = EmbedderModelHandler(
        model_uri,
        min_batch_size=s.min_batch_size,
        max_batch_size=s.max_batch_size,
        large_model=s.large_model,
        intra_op_threads=s.intra_op_threads,
    )
    # Batched before the read, so that a batch stays one element from here to its rows.
    batches = to_read | "Batch" >> beam.BatchElements(**handler.batch_elements_kwargs())
    read = batches | "ReadPhotos" >> beam.ParDo(
        _ReadPhotos(model.image_size, s.decode_threads)
    ).with_outputs(DEAD_LETTER_TAG, STATE_TAG, COUNTS_TAG, main="images")
    created_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    inferred = read.images | "Inference" >> PipelinedInference(
        handler,
        _BatchRows(model.version, model.embedding_dim, created_at, s.catalog),
        model_tag=model_uri,
        calls_in_flight=MODEL_CALLS_IN_FLIGHT,
        batched=True,
    )
    embedded = inferred.predictions  # one _Embedded per model batch
    _ = embedded | "Progress" >> LogProgress(STAGE, "images embedded", weight=_rows_of)
    merged = (
        embedded
        | "MergeBatches"
        >> beam.BatchElements(
            min_batch_size=MERGED_ROWS, max_batch_size=MERGED_ROWS, element_size_fn=_rows_of
        )
        | "MergeTables" >> beam.Map(_merged)
    )
    written = (
        merged
        | "Rows" >> beam.Map(lambda e: e.rows)
        | "WriteEmbeddings"
        >> WriteEmbeddings(
            s.workdir,
            model.version,
            s.date,
            model.embedding_dim,
            s.num_shards,
            directory=staging.rows,
            # Shards sized by the photos read (an upper bound of the rows): counted before the
            # reads, so rows need not all be held before the first is keyed to its shard.
            expected_rows=selected.to_read_total,
        )
    )
    state_written = (
        (
            read[STATE_TAG]  # recognised by sha256 after the read: few, one dict each
            | "BatchStateRows" >> beam.BatchElements(min_batch_size=4096, max_batch_size=4096)
            | "StateTables" >> beam.Map(state_table),
            merged | "EmbeddedState" >> beam.Map(lambda e: e.state),
        )
        | "AllStateTables" >> beam.Flatten()
        | "WriteState" >> WriteState(staging.state, buckets)
    )
    kept_written = kept | "WriteKeptState" >> beam.ParDo(WriteKeptState(staging.state, buckets))
    dead = (
        (
            catalog[DEAD_LETTER_TAG] | "CatalogRejects" >> beam.Map(_count_catalog_reject),
            read[DEAD_LETTER_TAG],
            inferred[FAILED_CALLS] | "FailedCalls" >> beam.Map(_failed_call_letter),
            inferred[FAILED_POSTPROCESSING] | "RejectedEmbeddings" >> beam.Map(_rejected_letter),
        )
        | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.Map(_count_dead)
    )
    dead_written = dead | "WriteDeadLetters" >> WriteDeadLetters(s.workdir, STAGE, s.date)
    # The counts the run summary reports, as the Beam counters count them, written by the job
    # once its outputs are (pipelines/job_record.py): a later process can finish the day.
    counts = (
        catalog[COUNTS_TAG],
        selected.counts,
        read[COUNTS_TAG],
        selected.to_read_total | "TallyToRead" >> SumAs(("images", "images_read"), int),
        kept
        | "TallyKept"
        >> SumAs(
            ("images", "skipped_unchanged", "skipped_by_metadata"), lambda k: k[1].table.num_rows
        ),
        written | "TallyEmbedded" >> SumAs("embedded", lambda w: w[1]),
        catalog[DEAD_LETTER_TAG] | "TallyCatalogRejects" >> CountAs("catalog_rejected"),
        dead | "TallyDeadLetters" >> CountAs("dead_letter_records"),
    )
    _ = counts | "WriteJobCounts" >> WriteJobCounts(
        record.counts_uri,
        record.header(),
        after=[written, state_written, kept_written, dead_written],
    )


# ------------------------------------------------------------------ steps


class _ReadPhotos(LookaheadDoFn):
    """A batch of PhotoToRead -> one model batch of (EmbedKey, uint8 pixels): every photo of it
    unless its bytes hash to a sha256 the slot already has, or it cannot be read or decoded.

    One step reads, hashes and decodes (same size cap and dead-letter reasons as
    ``ReadImageBytes`` and ``DecodeImages``), a batch at a time in ``threads`` pool threads
    ahead of the model step (``transforms/lookahead.py``): the reads and decodes of the next
    batches overlap the current batch's model call instead of taking turns with it, and no Beam
    step runs per photo between the batching and the rows. A photo read under a metadata key gets
    a state row: here when its sha256 is known (``state``), else from ``_BatchRows`` once its
    embedding row is made (the key rides along in ``EmbedKey``), so a photo dead-lettered after
    the read is read again the next day rather than remembered.
    """

    BATCHES_AHEAD = 2  # two model batches decoded ahead (~3.5 MB of pixels at 96 px)

    def __init__(self, image_size: int, threads: int) -> None:
        super().__init__(threads, lookahead=self.BATCHES_AHEAD)
        self._image_size = image_size

    def setup(self) -> None:
        super().setup()
        counter = beam.metrics.Metrics.counter
        self._reads = counter(METRICS_NAMESPACE, "images_read")
        self._decoded = counter(METRICS_NAMESPACE, "images_decoded")

    def work(self, batch: list[PhotoToRead]) -> list[_Read]:
        return [self._read(photo) for photo in batch]

    def _read(self, photo: PhotoToRead) -> _Read:
        try:
            data = read_images.read_limited(photo.uri, read_images.DEFAULT_MAX_BYTES)
        except (storage.StorageError, ValueError) as e:
            return _Read(error=f"listing image: {e}"[:500])
        sha = images.sha256_hex(data)
        if sha in photo.known_sha256:
            return _Read(sha256=sha)  # new metadata, same bytes: the embedding row exists
        pixels = read_images.decode_or_error(data, self._image_size, images.DEFAULT_MAX_PIXELS)
        return _Read(sha256=sha, pixels=pixels)

    def outputs(self, batch: list[PhotoToRead], reads: list[_Read]) -> Iterator[Any]:
        self._reads.inc(len(batch))
        decoded: list[tuple[EmbedKey, np.ndarray]] = []
        for photo, read in zip(batch, reads, strict=True):
            if read.error:
                yield dead_letter(STAGE, read.error, photo.listing_id, photo.uri)
            elif read.pixels is None:
                yield tally("skipped_unchanged")  # new metadata, same bytes
                if photo.meta_key:
                    state = _state_row(
                        photo.listing_id, photo.image_index, photo.uri, photo.meta_key, read.sha256
                    )
                    yield beam.pvalue.TaggedOutput(STATE_TAG, state)
            elif isinstance(read.pixels, images.ImageError):
                ref = ImageRef(photo.listing_id, photo.image_index, photo.uri, "listing")
                reason = read_images.decode_reason(ref, read.pixels)
                yield dead_letter(STAGE, reason, photo.listing_id, photo.uri)
            else:
                # What rides along with the pixels to the row.
                key = EmbedKey(
                    photo.listing_id, photo.image_index, photo.uri, read.sha256, photo.meta_key
                )
                decoded.append((key, read.pixels))
        self._decoded.inc(len(decoded))
        if decoded:
            yield decoded


class _Read(NamedTuple):
    """What ``_ReadPhoto.work`` found: an error, a known sha256 (no pixels), or pixels (or the
    decode's error)."""

    error: str = ""
    sha256: str = ""
    pixels: np.ndarray | images.ImageError | None = None


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


class _Embedded(NamedTuple):
    """One model batch's output: its contract rows and the state rows of those read under a
    metadata key (both ``PackedTable``: they cross the shard and bucket shuffles as one)."""

    rows: PackedTable
    state: PackedTable


def _rows_of(e: _Embedded) -> int:
    return e.rows.table.num_rows


def _merged(batch: list[_Embedded]) -> _Embedded:
    """Several model batches' rows and state rows as one ``_Embedded`` (``MERGED_ROWS``)."""
    return _Embedded(
        PackedTable(pa.concat_tables([e.rows.table for e in batch])),
        PackedTable(pa.concat_tables([e.state.table for e in batch])),
    )


class _BatchRows:
    """A batch's (EmbedKey, PredictionResult) pairs -> one ``_Embedded``: every vector
    re-normalised (``unit_vectors``), the rejected ones to ``failed_postprocessing`` with their
    reason, the others as contract rows and, when read under a metadata key, state rows."""

    def __init__(self, version: str, dim: int, created_at: dt.datetime, catalog: str) -> None:
        self._version, self._dim, self._created_at = version, dim, created_at
        self._catalog = catalog

    def __call__(self, pairs: Pairs) -> Postprocessed:
        if not pairs:
            return Postprocessed([], [])
        keys: list[EmbedKey] = [key for key, _ in pairs]
        predictions: list[Prediction] = [result.inference for _, result in pairs]  # type: ignore[misc]
        vectors, reasons = unit_vectors(np.stack([p.embedding for p in predictions]))
        if vectors.shape[1] != self._dim:  # the job's failure: no file downstream could read
            raise ValueError(
                f"the model gave {vectors.shape[1]}-dim embeddings, its config says {self._dim}"
            )
        good = [i for i, reason in enumerate(reasons) if not reason]
        rejected = [(keys[i], reason) for i, reason in enumerate(reasons) if reason]
        if not good:
            return Postprocessed([], rejected)
        kept = [keys[i] for i in good]
        rows = embeddings.from_columns(
            vectors[good],
            {
                "listing_id": [k.listing_id for k in kept],
                # as the catalog names it, never this machine's path
                "image_uri": [catalog_name(k.uri, self._catalog) for k in kept],
                "image_index": [k.image_index for k in kept],
                "image_sha256": [k.sha256 for k in kept],
                "model_version": [self._version] * len(kept),
                "category_pred": [predictions[i].category for i in good],
                "category_score": [predictions[i].category_score for i in good],
                "created_at": [self._created_at] * len(kept),
            },
        )
        # The photos with their row now: remember their keys for tomorrow's skip.
        state = state_table(
            [
                _state_row(k.listing_id, k.image_index, k.uri, k.meta_key, k.sha256)
                for k in kept
                if k.meta_key
            ]
        )
        return Postprocessed(
            [_Embedded(PackedTable(pa.Table.from_batches([rows])), state)], rejected
        )


def _failed_call_letter(failed: tuple[EmbedKey, str]) -> DeadLetter:
    """A photo of a batch whose model call raised: the call's error is its reason."""
    key, error = failed
    return dead_letter(STAGE, f"inference failed: {error}", key.listing_id, key.uri).value


def _rejected_letter(failed: tuple[EmbedKey, str]) -> DeadLetter:
    """A photo whose vector the postprocess step rejected, with its reason."""
    key, error = failed
    return dead_letter(STAGE, error, key.listing_id, key.uri).value


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
