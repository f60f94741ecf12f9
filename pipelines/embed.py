"""``vsearch embed``: incremental image embeddings (a Beam ModelHandler, pipelined calls), written as Parquet.

``run(EmbedSettings) -> EmbedResult`` is one chain: check the inputs (``embed_checks``: the
model, the snapshot's size, the earlier files) -> plan the skip (``embed_plan``: which earlier
state and partitions tell the unchanged photos) -> run the Beam job (``embed_job``: read, decode
and embed the other photos into a staging folder) -> check the bad fraction (dead letters /
images within ``max_bad_fraction``) -> commit the day's partition and state snapshot as a whole
(``embed_commit``) -> write the run summary. A run that fails the check leaves the partition as
it was and its dead letters for inspection. Everything after the job is ``finish``, which works
from the files the job and its launch wrote (``job_record``): right after the job in a normal
run, or later, in another process, after a Flex Template launch (``vsearch finish embed``).

Idempotence: a run of day D skips only keys of partitions dt < D, and rewrites partition D, so
re-running a day gives the same rows and no duplicates. ``--full`` skips nothing (new model).

This module loads neither Beam nor TensorFlow: the CLI builds ``vsearch embed --help`` from
``EmbedSettings``, and ``run`` imports the job when it runs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core import embeddings, partitions, paths, runs
from core.runs import Counts, RunSummary
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE, WORKDIR, doc
from models import artifact
from pipelines import job_record
from pipelines.embed_checks import (
    EmbedError,
    check_readable,
    check_shrink,
    count_listings,
    resolve_model,
    too_many_dead_letters,
)
from pipelines.embed_commit import commit_day, discard, new_staging, staging_at
from pipelines.embed_plan import plan_skip
from pipelines.job_record import JobCounts, JobRecord, Launched

# The stage's face: what the CLI, the registry and callers use.
__all__ = [
    "STAGE",
    "EmbedError",
    "EmbedResult",
    "EmbedSettings",
    "default_pipeline_args",
    "finish",
    "run",
]

STAGE = "embed"


@dataclass(frozen=True)
class EmbedSettings:
    catalog: str = field(metadata=CATALOG)
    date: dt.date = field(metadata=DATE)
    workdir: str = field(metadata=WORKDIR)
    model_version: str | None = field(  # None: the published model (models/PUBLISHED)
        default=None, metadata=doc("model VERSION (default: models/PUBLISHED)", flag="model")
    )
    full: bool = field(  # the first run of a newly promoted model
        default=False, metadata=doc("re-embed every image, skipping nothing (after a new model)")
    )
    min_batch_size: int = field(
        default=8, metadata=doc("smallest inference batch (BatchElements adapts up to the max)")
    )
    max_batch_size: int = field(  # 64 x 224^2 RGB floats = 38 MB: fits any CPU or GPU worker
        default=64, metadata=doc("largest inference batch; bounds worker memory (GPU included)")
    )
    max_bad_fraction: float = field(  # more than this means a broken input or model
        default=0.01,
        metadata=doc("fail without publishing when more images than this are dead-lettered"),
    )
    num_shards: int = field(default=0, metadata=doc("Parquet files (0: one per ~50k rows)"))
    allowed_buckets: tuple[str, ...] = field(default=(), metadata=ALLOWED_BUCKETS)
    large_model: bool = field(  # GPU workers: one TensorFlow per GPU, not one per SDK process
        default=False, metadata=doc("one model copy per machine, shared by its processes (GPU)")
    )
    intra_op_threads: int = field(default=0, metadata=doc("TensorFlow threads (0: TF decides)"))
    # Pillow releases the GIL: a decode thread works on the next photos while the model runs.
    decode_threads: int = field(
        default=1,
        metadata=doc("threads reading and decoding photos ahead of the model (0: in line)"),
    )
    # A broken upstream export must not empty the index: an empty snapshot, or one that lost
    # more than max_shrink_fraction of the last embedded day's listings, is refused.
    allow_shrink: bool = field(
        default=False,
        metadata=doc(
            "embed an empty or sharply smaller snapshot (a real clear-out of the catalog)"
        ),
    )
    max_shrink_fraction: float = field(  # losing >20% of listings in a day is a broken export
        default=0.2,
        metadata=doc("largest day-over-day drop in listings accepted without --allow-shrink"),
    )


@dataclass(frozen=True)
class EmbedResult(Counts):
    """Counts (``ok`` = images embedded, ``skipped`` = unchanged) and which model embedded them."""

    model_version: str = ""
    full: bool = False  # the partition was re-embedded from scratch


def run(
    settings: EmbedSettings, pipeline_args: list[str] | None = None, test_pipeline: Any = None
) -> EmbedResult | Launched:
    """Embed the new or changed listing photos of ``settings.date``; writes the run summary. A
    template launch (``--template_location``) only describes the job: the day is left to
    ``finish``."""
    # Beam and the model handler load here, when the job runs (module docstring).
    from pipelines import embed_job
    from transforms.change_detection import buckets_for

    s = settings
    if not 0.0 <= s.max_bad_fraction <= 1.0:
        raise ValueError(f"--max-bad-fraction must be in 0..1, got {s.max_bad_fraction}")
    if not 0.0 <= s.max_shrink_fraction <= 1.0:
        raise ValueError(f"--max-shrink-fraction must be in 0..1, got {s.max_shrink_fraction}")
    model = resolve_model(s.workdir, s.model_version)
    earlier = _earlier_partitions(s.workdir, model.version, s.date)
    listings_today = count_listings(s.catalog, s.date)
    if not s.allow_shrink:
        days = sorted(earlier, reverse=True)
        check_shrink(s.catalog, s.date, listings_today, days, s.max_shrink_fraction)
    plan = plan_skip(s.workdir, model.version, s.date, earlier, s.full)
    check_readable(plan.files)  # a truncated earlier file: one clear error, now
    buckets = buckets_for(listings_today)
    # The model's own run folder: a launch for another model never clears this one (job_record).
    staging = new_staging(s.workdir, STAGE, s.date, model.version)
    # What the summary and the commit need besides the job's counts (job_record.py).
    facts = {
        "model_version": model.version,
        "full": s.full,
        "earlier_files": len(plan.key_files),
        "skip_check": plan.how,
        "change_buckets": buckets,
        "max_bad_fraction": s.max_bad_fraction,
        "basis": plan.basis,
    }
    record = job_record.launch(s.workdir, STAGE, s.date, staging.attempt, facts, model.version)
    job, distributions = embed_job.run_job(
        s,
        model,
        plan,
        staging,
        buckets,
        record,
        default_pipeline_args(pipeline_args),
        test_pipeline,
        on_failure=lambda: discard(staging),  # a crashed run leaves no half-written output
    )
    if job.described:
        launched = Launched(STAGE, s.date.isoformat(), s.workdir, staging.attempt, model.version)
        print(launched.one_line(), flush=True)
        return launched
    return _finish(record, job.wall_s, distributions)


def finish(workdir: str, date: dt.date | str, model_version: str | None = None) -> EmbedResult:
    """Finish the day of an embed job launched earlier (``vsearch finish embed``): the bad
    fraction check, the partition commit, the run summary and the marker, from the files the job
    wrote. ``model_version``: the model the job was launched with (``vsearch embed --model``);
    None, the published one, as for the launch: production's day, which the DAG finishes. Jobs
    launched for other models are left as they are. Raises JobNotFinished when the files are not
    all there; a day finished before is left as it is."""
    version = model_version or artifact.published_version(workdir)
    if job_record.already_finished(workdir, STAGE, date, version):
        return job_record.finished_before(workdir, STAGE, date, EmbedResult, version)
    return _finish(job_record.find(workdir, STAGE, date, version))


def _finish(
    record: JobRecord, wall_s: float | None = None, distributions: Mapping[str, Any] | None = None
) -> EmbedResult:
    """Check the bad fraction, commit the staged day, write the summary and the marker; the
    run's folder goes. ``wall_s`` and ``distributions``: the job's time and Beam distributions
    when this process ran it (a later process has the record's times and no distributions)."""
    counts = job_record.read_counts(record)  # refuses before anything is written
    if wall_s is None:
        wall_s = job_record.wall_s(record, counts)
    summary = _summary(record, counts, wall_s, distributions or {})
    workdir, date = record.workdir, dt.date.fromisoformat(record.date)
    version = str(record.facts["model_version"])
    staging = staging_at(record.run_id, record.root)
    if not summary.extra["published"]:
        runs.write_summary(workdir, summary)  # the health record, but no completion marker
        discard(staging)
        raise too_many_dead_letters(
            summary.dead_lettered,
            summary.read,
            float(record.facts["max_bad_fraction"]),
            paths.embeddings_dir(workdir, version, date),
            paths.deadletter_dir(workdir, STAGE, date),
        )
    commit_day(staging, workdir, version, date, dict(record.facts["basis"]))
    runs.complete(workdir, summary)
    job_record.close(record)
    full = bool(record.facts["full"])
    return EmbedResult(**vars(Counts.of(summary)), model_version=version, full=full)


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


def _earlier_partitions(
    workdir: str, version: str, date: dt.date
) -> dict[dt.date, partitions.Committed]:
    """The model version's committed partitions before ``date`` (what a run of ``date`` skips)."""
    committed = embeddings.committed_partitions(workdir, version)
    return {d: c for d, c in committed.items() if d < date}


def _summary(
    record: JobRecord,
    counts: JobCounts,
    wall_s: float,
    distributions: Mapping[str, Any],
) -> RunSummary:
    """The run summary from the job's counts and the launch's facts; ``extra["published"]``: the
    bad fraction allows committing the day."""
    c, facts = counts.get, record.facts
    read = c("images") + c("catalog_rejected")
    embedded, skipped, dead = c("embedded"), c("skipped_unchanged"), c("dead_letter_records")
    bad_fraction = dead / read if read else 0.0
    extra = {
        "model_version": facts["model_version"],
        "full": facts["full"],
        "earlier_files": facts["earlier_files"],
        "skip_check": facts["skip_check"],
        "catalog_rejected": c("catalog_rejected"),
        # Listings rows the column rules left to the one-row-at-a-time parser (the slow path).
        "listing_rows_parsed_alone": c("listing_rows_parsed_alone"),
        "images_read": c("images_read"),
        "skipped_by_metadata": c("skipped_by_metadata"),
        "objects_listed": c("metadata_listed"),  # gs:// objects, from listings
        "files_stat": c("metadata_stat"),  # local photos, one stat each
        "change_buckets": facts["change_buckets"],
        "bad_fraction": round(bad_fraction, 6),
        "published": bad_fraction <= float(facts["max_bad_fraction"]),
        **distributions,
    }
    return RunSummary(STAGE, record.date, read, embedded, dead, skipped, wall_s, extra)
