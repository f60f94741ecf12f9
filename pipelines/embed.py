"""``vsearch embed``: incremental image embeddings (a Beam ModelHandler, pipelined calls), written as Parquet.

``run(EmbedSettings) -> EmbedResult`` is one chain: check the inputs (``embed_checks``: the
model, the snapshot's size, the earlier files) -> plan the skip (``embed_plan``: which earlier
state and partitions tell the unchanged photos) -> run the Beam job (``embed_job``: read, decode
and embed the other photos into a staging folder) -> check the bad fraction (dead letters /
images within ``max_bad_fraction``) -> commit the day's partition and state snapshot as a whole
(``embed_commit``) -> write the run summary. A run that fails the check leaves the partition as
it was and its dead letters for inspection.

Idempotence: a run of day D skips only keys of partitions dt < D, and rewrites partition D, so
re-running a day gives the same rows and no duplicates. ``--full`` skips nothing (new model).

This module loads neither Beam nor TensorFlow: the CLI builds ``vsearch embed --help`` from
``EmbedSettings``, and ``run`` imports the job when it runs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import embeddings, partitions, paths, runs
from core.runs import Counts, RunSummary
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE, WORKDIR, doc
from pipelines.embed_checks import (
    EmbedError,
    check_readable,
    check_shrink,
    count_listings,
    resolve_model,
    too_many_dead_letters,
)
from pipelines.embed_commit import commit_day, discard, new_staging
from pipelines.embed_plan import SkipPlan, plan_skip

if TYPE_CHECKING:
    from pipelines.stage import BeamRun

# The stage's face: what the CLI, the registry and callers use.
__all__ = ["STAGE", "EmbedError", "EmbedResult", "EmbedSettings", "default_pipeline_args", "run"]

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
) -> EmbedResult:
    """Embed the new or changed listing photos of ``settings.date``; writes the run summary."""
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
    staging = new_staging(s.workdir, STAGE, s.date)
    job, distributions = embed_job.run_job(
        s,
        model,
        plan,
        staging,
        buckets,
        default_pipeline_args(pipeline_args),
        test_pipeline,
        on_failure=lambda: discard(staging),  # a crashed run leaves no half-written output
    )
    summary = _summary(s, model.version, plan, buckets, job, distributions)
    if not summary.extra["published"]:
        runs.write_summary(s.workdir, summary)  # the health record, but no completion marker
        discard(staging)
        raise too_many_dead_letters(
            summary.dead_lettered,
            summary.read,
            s.max_bad_fraction,
            paths.embeddings_dir(s.workdir, model.version, s.date),
            paths.deadletter_dir(s.workdir, STAGE, s.date),
        )
    commit_day(staging, s.workdir, model.version, s.date, plan.basis)
    runs.complete(s.workdir, summary)
    return EmbedResult(**vars(Counts.of(summary)), model_version=model.version, full=s.full)


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
    s: EmbedSettings,
    version: str,
    plan: SkipPlan,
    buckets: int,
    job: BeamRun,
    distributions: Mapping[str, Any],
) -> RunSummary:
    """The run summary from the job's counters; ``extra["published"]``: the bad fraction allows
    committing the day."""
    c = job.counters
    read = c.get("images", 0) + c.get("catalog_rejected", 0)
    embedded, skipped, dead = (
        c.get("embedded", 0),
        c.get("skipped_unchanged", 0),
        c.get("dead_letter_records", 0),
    )
    bad_fraction = dead / read if read else 0.0
    extra = {
        "model_version": version,
        "full": s.full,
        "earlier_files": len(plan.key_files),
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
        "published": bad_fraction <= s.max_bad_fraction,
        **distributions,
    }
    return RunSummary(STAGE, s.date.isoformat(), read, embedded, dead, skipped, job.wall_s, extra)
