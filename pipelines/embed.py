"""``vsearch embed``: incremental image embeddings with Beam RunInference, written as Parquet.

    ReadListingTables (transforms/read_listing_tables.py: Arrow tables of valid listings, no
    object per listing) -> PhotosToRead (transforms/change_detection.py: the catalog's photos,
    folder listings, the earlier partitions' keys and the earlier runs' metadata state, joined as
    Arrow tables in hash buckets; never a byte of an unchanged photo, never an element per
    unchanged photo) -> ReadPhotos (read and hash; a sha256 the slot already has is skipped before any
    decoding) -> DecodeImages (the safe Pillow decoder, once per photo) -> KeyPixels ->
    RunInference(KeyedModelHandler: uint8 pixels through the model's pixel signature) -> ToRows
    (NaN / zero-norm -> dead letter) -> WriteEmbeddings
    (+ WriteState: this run's state snapshot, metadata key -> sha256 of every photo that has an
    embedding row: those skipped, those recognised after the read, those embedded today)

Why joins and not a side input for the skip: the known keys are one row per image ever embedded
(~100 bytes each; 30 GB at 300M images). A side input would have to fit on every worker; the
bucketed joins shuffle only keys and URIs (never image bytes, which are read after the join), so
they cost the same shape on a laptop and on Dataflow.

Publishing: shards are written to a staging folder; only when the bad fraction (dead letters /
images) is within ``max_bad_fraction`` is the day's partition replaced by them as a whole
(core/partitions.py: a manifest, and an atomic directory swap locally). A run that
fails the check leaves the partition as it was and its dead letters for inspection. Before any
work the run refuses an empty or sharply shrunk snapshot and an unreadable earlier file.

Idempotence: a run of day D skips only keys of partitions dt < D, and rewrites partition D, so
re-running a day gives the same rows and no duplicates. ``--full`` skips nothing (new model).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import PredictionResult, RunInference

from core import embeddings, embedstate, images, partitions, paths, runs, storage
from core.catalog import ImageRef, catalog_name
from core.deadletter import DeadLetter
from core.runs import METRICS_NAMESPACE, RunSummary
from models import artifact
from pipelines.embed_checks import EmbedError, check_readable, check_shrink, count_listings
from pipelines.settings import EmbedResult, EmbedSettings
from pipelines.stage import run_pipeline
from transforms import read_images
from transforms.change_detection import PhotosToRead, PhotoToRead, buckets_for
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters, dead_letter
from transforms.embedding_writer import WriteEmbeddings, WriteKeptState, WriteState
from transforms.inference import InferenceFailure, Prediction, keyed_handler
from transforms.progress import LogProgress

STAGE = "embed"
# Each model batch runs as two calls at once: one call leaves CPU cores idle (the model alone
# embeds ~20% more photos a second with 2 callers than with 1 on 2 cores; not measured on a GPU).
MODEL_CALLS_AT_ONCE = 2
_log = logging.getLogger(__name__)


class EmbedKey(NamedTuple):
    """What rides along with the image bytes through RunInference."""

    listing_id: str
    image_index: int
    uri: str
    sha256: str
    meta_key: str  # "" when the photo has none (then no state row is written)


def resolve_model(workdir: str, version: str | None) -> artifact.ModelConfig:
    """--model, else the published version (``models.artifact``), checked before any work."""
    try:
        config = artifact.resolve(workdir, version)
        artifact.check_saved_model(paths.embedder_dir(workdir, config.version))
    except artifact.ModelArtifactError as e:
        raise EmbedError(str(e)) from e
    return config


# ------------------------------------------------------------------ DoFns


def _count_catalog_reject(d: DeadLetter) -> DeadLetter:
    """A listing row the catalog reader rejected (embed reads no review rows)."""
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "catalog_rejected").inc()
    return d


STATE_TAG = "state"


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
    """Model outputs -> contract rows (and ``state`` rows); failures, NaN and zero-norm vectors
    -> dead letters."""

    def __init__(self, version: str, created_at: dt.datetime, catalog: str) -> None:
        self._version, self._created_at, self._catalog = version, created_at, catalog

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
            "image_uri": catalog_name(key.uri, self._catalog),  # as the catalog names it
            "image_index": key.image_index,
            "image_sha256": key.sha256,
            "model_version": self._version,
            # Re-normalised in float64 so that norms are 1 to float32 precision whatever the model.
            "embedding": (v / norm).astype(np.float32),
            "category_pred": p.category,
            "category_score": p.category_score,
            "created_at": self._created_at,
        }
        if key.meta_key:  # the photo has its row: remember its key for tomorrow's skip
            state = _state_row(key.listing_id, key.image_index, key.uri, key.meta_key, key.sha256)
            yield beam.pvalue.TaggedOutput(STATE_TAG, state)


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
    p: beam.Pipeline,
    s: EmbedSettings,
    model: artifact.ModelConfig,
    key_files: list[str],
    staging: str,
    state_files: Sequence[str] = (),
    state_staging: str | None = None,
    buckets: int = 1,
    state_checked: bool = False,
) -> None:
    """Add the embed job's steps to ``p``; ``state_files`` are earlier runs' metadata states
    (``state_checked``: one snapshot on unchanged partitions, see ``SkipPlan``),
    ``state_staging`` where this run's goes (None: no metadata skip and no state written),
    ``buckets`` the change detection's hash buckets (``change_detection.buckets_for``)."""
    from transforms.read_listing_tables import ReadListingTables

    catalog = p | "ReadListings" >> ReadListingTables(
        s.catalog, s.date, s.allowed_buckets, stage=STAGE, buckets=buckets
    )
    to_read, kept = catalog["listings"] | "PhotosToRead" >> PhotosToRead(
        key_files,
        state_files if state_staging else (),
        buckets,
        bool(state_staging),
        state_checked=state_checked,
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
    predictions, failed = (
        decoded[read_images.MAIN_TAG]
        | "KeyPixels" >> beam.Map(_keyed_pixels)
        | "RunInference" >> RunInference(handler).with_exception_handling()
    )
    _ = predictions | "Progress" >> LogProgress(STAGE, "images embedded")
    created_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rows = predictions | "ToRows" >> beam.ParDo(
        _ToRows(model.version, created_at, s.catalog)
    ).with_outputs(DEAD_LETTER_TAG, STATE_TAG, main="rows")
    _ = rows.rows | "WriteEmbeddings" >> WriteEmbeddings(
        s.workdir, model.version, s.date, model.embedding_dim, s.num_shards, directory=staging
    )
    if state_staging:
        _ = (
            (read[STATE_TAG], rows[STATE_TAG])
            | "StateRows" >> beam.Flatten()
            | "WriteState" >> WriteState(state_staging, buckets)
        )
        _ = kept | "WriteKeptState" >> beam.ParDo(WriteKeptState(state_staging, buckets))
    _ = (
        (
            catalog[DEAD_LETTER_TAG] | "CatalogRejects" >> beam.Map(_count_catalog_reject),
            read[DEAD_LETTER_TAG],
            decoded[DEAD_LETTER_TAG],
            failed.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch_letters),
            rows[DEAD_LETTER_TAG],
        )
        | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.Map(_count_dead)
        | "WriteDeadLetters" >> WriteDeadLetters(s.workdir, STAGE, s.date)
    )


class SkipPlan(NamedTuple):
    """What the change detection reads to know which photos are unchanged."""

    key_files: list[str]  # earlier partitions' files, for their keys
    state_files: list[str]
    checked: bool  # state_files are one snapshot on unchanged partitions: no key file needed
    basis: dict[str, str]  # the earlier partitions (day -> commit id), for today's snapshot
    how: str  # for the run summary


def plan_skip(
    s: EmbedSettings, version: str, earlier: Mapping[dt.date, partitions.Committed]
) -> SkipPlan:
    """The newest state snapshot alone when the partitions it was made on are exactly today's
    ``earlier`` partitions (``core/embedstate.py``); else the state checked against
    every earlier partition's keys."""
    basis = {d.isoformat(): c.commit for d, c in earlier.items()}
    if s.full:
        return SkipPlan([], [], False, basis, "none (--full)")
    snap = embedstate.latest_snapshot(s.workdir, version, s.date)
    if snap is not None and snap.basis == basis:
        return SkipPlan([], snap.files, True, basis, f"state snapshot of {snap.day}")
    if snap is None:
        why = "no state snapshot"
    else:
        changed = sorted({d for d, _ in set(snap.basis.items()) ^ set(basis.items())})
        why = f"partitions changed since the state of {snap.day}: {', '.join(changed)}"
    key_files = [u for d in sorted(earlier, reverse=True) for u in earlier[d].files]
    # A snapshot still serves, checked against the keys; older snapshots add only photos that
    # left the catalog since, so they are not read (state from before snapshots is: every day).
    if snap is not None:
        state_files = snap.files
    else:
        state_files = embedstate.files_before(s.workdir, version, s.date)
    return SkipPlan(key_files, state_files, False, basis, f"every earlier partition ({why})")


def run(
    settings: EmbedSettings, pipeline_args: list[str] | None = None, test_pipeline: Any = None
) -> EmbedResult:
    """Embed the new or changed listing photos of ``settings.date``; writes the run summary."""
    s = settings
    if not 0.0 <= s.max_bad_fraction <= 1.0:
        raise ValueError(f"--max-bad-fraction must be in 0..1, got {s.max_bad_fraction}")
    if not 0.0 <= s.max_shrink_fraction <= 1.0:
        raise ValueError(f"--max-shrink-fraction must be in 0..1, got {s.max_shrink_fraction}")
    model = resolve_model(s.workdir, s.model_version)
    committed = embeddings.committed_partitions(s.workdir, model.version)
    earlier = {d: c for d, c in committed.items() if d < s.date}
    listings_today = count_listings(s.catalog, s.date)
    if not s.allow_shrink:
        days = sorted(earlier, reverse=True)
        check_shrink(s.catalog, s.date, listings_today, days, s.max_shrink_fraction)
    buckets = buckets_for(listings_today)
    plan = plan_skip(s, model.version, earlier)
    key_files, state_files = plan.key_files, plan.state_files
    check_readable([*key_files, *state_files])  # a truncated earlier file: one clear error, now
    attempt = uuid.uuid4().hex[:12]
    staging = paths.staging_dir(s.workdir, STAGE, s.date, attempt)
    storage.delete_prefix(storage.parent(staging))  # what crashed runs of this day left behind
    staged_rows, staged_state = storage.join(staging, "rows"), storage.join(staging, "state")
    job = run_pipeline(
        STAGE,
        s.workdir,
        s.date,
        lambda p: build(
            p, s, model, key_files, staged_rows, state_files, staged_state, buckets, plan.checked
        ),
        default_pipeline_args(pipeline_args),
        test_pipeline,
        # A crashed run leaves no half-written output behind.
        on_failure=lambda: storage.delete_prefix(staging),
    )
    c = job.counters
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
        "skip_check": plan.how,
        "catalog_rejected": c.get("catalog_rejected", 0),
        # Listings rows the column rules left to the one-row-at-a-time parser (the slow path).
        "listing_rows_parsed_alone": c.get("listing_rows_parsed_alone", 0),
        "images_read": c.get("images_read", 0),
        "skipped_by_metadata": c.get("skipped_by_metadata", 0),
        "objects_listed": c.get("metadata_listed", 0),  # gs:// objects, from listings
        "files_stat": c.get("metadata_stat", 0),  # local photos, one stat each
        "change_buckets": buckets,
        "bad_fraction": round(bad_fraction, 6),
        "published": not failed,
        **_distributions(job.result),
    }
    summary = RunSummary(
        STAGE, s.date.isoformat(), read, embedded, dead, skipped, job.wall_s, extra
    )
    if failed:
        runs.write_summary(s.workdir, summary)  # the health record, but no completion marker
        storage.delete_prefix(staging)
        raise EmbedError(
            f"{dead} of {read} images dead-lettered ({bad_fraction:.2%} > --max-bad-fraction "
            f"{s.max_bad_fraction:.2%}); partition {paths.embeddings_dir(s.workdir, model.version, s.date)} "
            f"left unchanged. Reasons: {paths.deadletter_dir(s.workdir, STAGE, s.date)}"
        )
    published = publish_partition(
        staged_rows, paths.embeddings_dir(s.workdir, model.version, s.date), attempt
    )
    # Today's state holds only photos with a row in these partitions (a day without files is
    # not listed as a partition, so it is not named either).
    basis = {**plan.basis, **({s.date.isoformat(): attempt} if published else {})}
    publish_partition(
        staged_state,
        paths.embed_state_dir(s.workdir, model.version, s.date),
        attempt,
        extra={"basis": basis},
    )
    storage.delete_prefix(staging)
    runs.complete(s.workdir, summary)
    return EmbedResult(**vars(runs.Counts.of(summary)), model_version=model.version, full=s.full)


def default_pipeline_args(pipeline_args: list[str] | None) -> list[str]:
    """The caller's Beam flags; with none about the runner, the DirectRunner in memory, one worker.

    Not ``multi_threading``: with two worker threads Beam 2.77's FnApiRunner lost or corrupted
    elements of this job on a 5,049-photo full run (3 of 4 runs: 50 rows missing, caught by the
    summary's accounting; a ``None`` row; a pickled element that decoded into 18 GB and an OOM
    kill), never in ``in_memory`` mode. ``multi_processing`` was correct but 1.9x slower here
    (a model per process). In memory was ~1.15x slower than two threads on 2 cores; correct
    output comes first. Any runner flag the caller passes wins.
    """
    args = list(pipeline_args or [])
    if any(
        a.startswith(("--runner", "--direct_running_mode", "--direct_num_workers")) for a in args
    ):
        return args
    return [*args, "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def publish_partition(
    staged: str, partition: str, attempt: str, extra: dict[str, Any] | None = None
) -> int:
    """Commit the staged files as the whole partition (core/partitions.py); returns how
    many files it now holds."""
    uris = [u for u in storage.list_prefix(staged) if u.endswith(".parquet")]
    rows = storage.map_io(_num_rows, uris, remote=storage.is_gcs(staged))
    files = list(zip(uris, rows, strict=True))
    partitions.publish(staged, partition, attempt, files, extra=extra)
    return len(files)


def _num_rows(uri: str) -> int:
    """A Parquet file's row count, from its footer."""
    with storage.open_read(uri) as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


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
