"""``vsearch preprocess``: catalog snapshot -> TF Transform -> transformed TFRecords + transform_fn.

One row per image (listing photos and buyer review photos alike, labelled with their listing's
labels), split by listing (``catalog.is_eval_listing``: a listing's photos and its reviews never
straddle train and eval). ``AnalyzeAndTransformDataset`` on train, ``TransformDataset`` on eval,
``WriteTransformFn``. Images enter TFT as the uint8 pixels of the sanitised image
(``images.decode_image``: decoded once, letterboxed), the same pixels the embed stage feeds the
exported model's pixel signature; the TFRecords store them once and the TFT graph's statistics
normalise them in training and serving alike.

Outputs under ``WORKDIR/transformed/dt=D/``: ``train-NNNNN-of-NNNNN.tfrecord.gz``,
``eval-NNNNN-of-NNNNN.tfrecord.gz``, ``transform_fn/``, ``transformed_metadata/``.

The Beam job is pipelines/preprocess_job.py, loaded when the stage runs: this module is light,
so ``vsearch preprocess --help`` answers at once, and so is ``finish``, which finishes the day
from what the job wrote (``pipelines/job_record.py``): right after the job in a normal run, or
later, in another process, after a Flex Template launch (``vsearch finish preprocess``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import sys
from dataclasses import dataclass, field

from core import paths, runs, storage
from core.runs import Counts
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE_STR, WORKDIR, doc
from pipelines import input_size, job_record
from pipelines.job_record import JobRecord, Launched

STAGE = "preprocess"
# The job's counts (Beam counters, and its counts file), by name.
IMAGES = "preprocess_images"
ROWS = "preprocess_rows"
REJECTED_ROWS = "preprocess_rejected_catalog_rows"
BAD_IMAGES = "preprocess_bad_images"
UNSAMPLED = "preprocess_images_not_sampled"
# The rare-class cut of models.features (tests/test_cli.py checks that it equals
# features.DEFAULT_MIN_CLASS_COUNT; importing that module needs TF).
MIN_CLASS_COUNT = 5


@dataclass(frozen=True)
class PreprocessSettings:
    catalog: str = field(metadata=CATALOG)
    date: str = field(metadata=DATE_STR)
    workdir: str = field(metadata=WORKDIR)
    # The model's input size. 0 (the default) chooses it from the catalog's buyer photos
    # (pipelines/input_size.py): 96 px for small photos where the item fills the frame (CPU
    # training in minutes, pattern detail still visible), 160 px for large phone frames.
    image_size: int = field(
        default=0,
        metadata=doc(
            "side in pixels of the model's input images (0: from the catalog's photos: 160 when "
            "the buyer photos' median longer side is >= 200 px, else 96)"
        ),
    )
    # 20% of listings (and all their reviews) held out for the retrieval test and the gate.
    eval_fraction: float = field(
        default=0.2, metadata=doc("share of listings held out (with their reviews) for eval")
    )
    # Classes rarer than this in the train split fold into the OOV ("other") class.
    min_class_count: int = field(
        default=MIN_CLASS_COUNT, metadata=doc("classes rarer than this become 'other'")
    )
    allowed_buckets: tuple[str, ...] = field(default=(), metadata=ALLOWED_BUCKETS)
    # The daily training budget: training reads a stable sample of at most this many listings of
    # the day's snapshot (all of them below it), not the whole catalog. 200k listings x ~5 photos
    # is ~1M images, about a day of training on one GPU; the embed stage still embeds everything.
    max_listings: int = field(
        default=200_000,
        metadata=doc("listings sampled from the day's snapshot for training (stable sample)"),
    )
    # Fixed shard counts give deterministic file names, so a re-run replaces every file.
    train_shards: int = field(default=4, metadata=doc("TFRecord files of the train split"))
    eval_shards: int = field(default=1, metadata=doc("TFRecord files of the eval split"))


def output_dir(settings: PreprocessSettings) -> str:
    return paths.transformed_dir(settings.workdir, settings.date)


def run(
    settings: PreprocessSettings,
    pipeline_args: list[str] | None = None,
    test_pipeline: object | None = None,
) -> Counts | Launched:
    """Run the stage for one date; writes its run summary and returns its counts. A template
    launch (``--template_location``) only describes the job: the day is left to ``finish``."""
    from pipelines.preprocess_job import run_job  # Beam and TF Transform: only when it runs

    s = settings
    if s.image_size < 0 or 0 < s.image_size < 32:
        raise ValueError(f"--image-size must be >= 32 (or 0: from the photos), got {s.image_size}")
    chosen = None
    if s.image_size == 0:
        chosen = input_size.measure(s.catalog, s.date, s.allowed_buckets)
        # stderr: Airflow's Beam provider stops reading stderr (where Beam logs the Dataflow
        # job's id) once a stdout line arrives before the job ends, and never sees the id.
        print(f"[{STAGE}] input size {chosen.reason()}", file=sys.stderr, flush=True)
        s = dataclasses.replace(s, image_size=chosen.size)
    run_id, _ = job_record.new_run(s.workdir, STAGE, s.date)
    facts = {
        "max_listings": s.max_listings,
        "image_size": s.image_size,
        "image_size_chosen": chosen.reason() if chosen else "set by --image-size",
        "eval_fraction": s.eval_fraction,
        "output": output_dir(s),
    }
    record = job_record.launch(s.workdir, STAGE, s.date, run_id, facts)
    job = run_job(s, record, pipeline_args, test_pipeline)  # type: ignore[arg-type]
    if job.described:
        launched = Launched(STAGE, s.date, s.workdir, run_id)
        print(launched.one_line(), flush=True)
        return launched
    return _finish(record, job.wall_s)


def finish(workdir: str, date: dt.date | str) -> Counts:
    """Finish the day of a preprocess job launched earlier (``vsearch finish preprocess``): its
    run summary and completion marker, from the files the job wrote. Raises JobNotFinished when
    they are not all there; a day finished before is left as it is."""
    if job_record.already_finished(workdir, STAGE, date):
        return job_record.finished_before(workdir, STAGE, date, Counts)
    return _finish(job_record.find(workdir, STAGE, date))


def _finish(record: JobRecord, wall_s: float | None = None) -> Counts:
    """The summary from the job's counts file and the launch's facts, then the marker; the
    run's folder and TF Transform's temp files go. ``wall_s``: the job's time when this process
    ran it (else from the record's times)."""
    counts = job_record.read_counts(record)  # refuses before anything is written
    rejected, bad = counts.get(REJECTED_ROWS), counts.get(BAD_IMAGES)
    unsampled = counts.get(UNSAMPLED)
    summary = runs.RunSummary(
        STAGE,
        record.date,
        read=counts.get(IMAGES) + unsampled + rejected,
        ok=counts.get(ROWS),
        dead_lettered=rejected + bad,
        skipped=unsampled,  # outside the day's training sample (--max-listings)
        wall_s=job_record.wall_s(record, counts) if wall_s is None else wall_s,
        extra=dict(record.facts),
    )
    _remove_tft_temp(storage.join(str(record.facts["output"]), "tmp"))
    runs.complete(record.workdir, summary)
    job_record.close(record)
    return Counts.of(summary)


def _remove_tft_temp(uri: str) -> None:
    """TFT's temp dir: objects on GCS; locally also the empty folders it leaves behind."""
    storage.delete_prefix(uri)
    if not storage.is_gcs(uri):
        shutil.rmtree(uri.removeprefix("file://"), ignore_errors=True)
