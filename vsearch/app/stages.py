"""Running the daily stages for one date: the glue shared by backfill, the demo and the DAG.

Each stage is run through its own ``main(argv)`` with the same flags a user would type, so a
backfill, a DAG task and a hand-typed command do exactly the same thing. Stages hand results to
the next one through their run summaries (``WORKDIR/runs/dt=D/STAGE.json``): train records the
model version, gate whether it promoted it, build-index the manifest it wrote. That keeps every
stage restartable on its own, from any process or machine.

A stage that finished for a date gets a completion marker (``runs/dt=D/STAGE.done``); backfill
skips stages whose marker exists, which is how it resumes after a failure.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vsearch.app import cli
from vsearch.core import paths, runs, storage

# The daily order (DESIGN.md). check-catalog is optional: preprocess and embed dead-letter bad
# inputs themselves, so the daily run does not pay for reading every image one more time.
DAILY_STAGES: tuple[str, ...] = ("preprocess", "train", "gate", "embed", "build-index", "publish")
BEAM_STAGES: frozenset[str] = frozenset({"check-catalog", "preprocess", "embed", "build-index"})


class StageFailed(RuntimeError):
    """A stage exited non-zero or raised; the message names the stage and date."""


@dataclass(frozen=True)
class DayRun:
    """What to run for one date. ``pipeline_args`` go to every Beam stage (runner options)."""

    catalog: str
    workdir: str
    date: dt.date
    full: bool = False  # re-embed everything even if the gate did not promote a new model
    pipeline_args: tuple[str, ...] = ()
    # Extra flags per stage, e.g. {"train": ("--epochs", "2")}.
    stage_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def is_done(workdir: str, stage: str, date: dt.date) -> bool:
    return storage.exists(paths.completion_marker(workdir, stage, date))


def mark_done(workdir: str, stage: str, date: dt.date) -> None:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    storage.write_text(paths.completion_marker(workdir, stage, date), stamp + "\n")


def summary_extra(workdir: str, stage: str, date: dt.date) -> dict[str, object]:
    """The ``extra`` dict a stage recorded in its run summary for a date."""
    try:
        return dict(runs.read_summary(workdir, stage, date).get("extra", {}))
    except storage.StorageError as e:
        raise StageFailed(f"{stage} has no run summary for {date}; run it first ({e})") from e


def stage_argv(stage: str, day: DayRun) -> list[str]:
    """The command-line flags for one stage on one date (what a user would type)."""
    d = day.date.isoformat()
    common = ["--workdir", day.workdir, "--date", d]
    if stage in ("check-catalog", "preprocess"):
        argv = ["--catalog", day.catalog, *common]
    elif stage == "train":
        argv = [*common]
    elif stage == "gate":
        version = str(summary_extra(day.workdir, "train", day.date)["version"])
        argv = ["--workdir", day.workdir, "--candidate", version]  # its date is the candidate's
    elif stage == "embed":
        argv = ["--catalog", day.catalog, *common]
        if day.full or _promoted_on(day.workdir, day.date):
            argv.append("--full")
    elif stage == "build-index":
        argv = ["--catalog", day.catalog, *common]
    elif stage == "publish":
        manifest = str(summary_extra(day.workdir, "build-index", day.date)["manifest"])
        argv = ["--workdir", day.workdir, "--manifest", manifest]
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(DAILY_STAGES)}")
    argv += list(day.stage_args.get(stage, ()))
    if stage in BEAM_STAGES:
        argv += list(day.pipeline_args)
    return argv


def _promoted_on(workdir: str, date: dt.date) -> bool:
    """True when the gate promoted a new model that day: its embeddings start from scratch."""
    if not storage.exists(paths.run_summary(workdir, "gate", date)):
        return False
    return bool(summary_extra(workdir, "gate", date).get("promoted", False))


def run_stage(stage: str, day: DayRun) -> None:
    """Run one stage for one date through its ``main``; raise StageFailed if it fails."""
    module = importlib.import_module(cli.COMMANDS[stage][0])
    argv = stage_argv(stage, day)
    try:
        code = module.main(argv)
    except Exception as e:
        raise StageFailed(f"{stage} failed for {day.date}: {type(e).__name__}: {e}") from e
    if code != 0:
        raise StageFailed(f"{stage} failed for {day.date} (exit {code}); flags: {' '.join(argv)}")


def run_day(
    day: DayRun,
    stages: Sequence[str] = DAILY_STAGES,
    skip_done: bool = True,
    on_event: Callable[[str], None] = print,
) -> list[str]:
    """Run ``stages`` in order for one date; returns the stages that actually ran."""
    ran: list[str] = []
    for stage in stages:
        if skip_done and is_done(day.workdir, stage, day.date):
            on_event(f"[{day.date}] {stage}: already complete, skipped")
            continue
        on_event(f"[{day.date}] {stage}: running")
        with runs.stopwatch() as t:
            run_stage(stage, day)
        mark_done(day.workdir, stage, day.date)
        on_event(f"[{day.date}] {stage}: done in {t['s']:.1f}s")
        ran.append(stage)
    return ran
