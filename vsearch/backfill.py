"""``vsearch backfill --start D1 --end D2``: the daily stages for every date in a range.

Dates run in order; within a date, stages run in the daily order. A stage already complete for a
date (its completion marker exists) is skipped, so after a failure or a kill the same command
resumes where it stopped, and re-running a finished range does nothing. Every stage is itself
idempotent for its date, so a stage killed half-way is simply run again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from core.settings import CATALOG, WORKDIR, doc
from vsearch.stages import DAILY_STAGES, DayRun, StageFailed, is_done, run_day


def _stage_list(text: str) -> tuple[str, ...]:
    """``embed,publish`` -> those stages, in daily order."""
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in DAILY_STAGES]
    if unknown or not wanted:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(DAILY_STAGES)}")
    return tuple(s for s in DAILY_STAGES if s in wanted)


def _stage_flags(value: str) -> tuple[str, tuple[str, ...]]:
    stage, sep, flags = value.partition("=")
    if not sep or stage not in DAILY_STAGES:
        raise ValueError(f"expected STAGE=FLAGS with STAGE in {DAILY_STAGES}, got {value!r}")
    return stage, tuple(flags.split())


@dataclass(frozen=True)
class BackfillSettings:
    catalog: str = field(metadata=CATALOG)
    workdir: str = field(metadata=WORKDIR)
    start: dt.date = field(metadata=doc("first date, YYYY-MM-DD", metavar="YYYY-MM-DD"))
    # Inclusive, as Airflow's backfill and most engineers read a date range.
    end: dt.date = field(metadata=doc("last date (inclusive), YYYY-MM-DD", metavar="YYYY-MM-DD"))
    stages: tuple[str, ...] = field(
        default=DAILY_STAGES,
        metadata=doc("comma-separated subset, run in daily order", parse=_stage_list),
    )
    full: bool = field(default=False, metadata=doc("re-embed every image on every date"))
    dry_run: bool = field(default=False, metadata=doc("print the plan and run nothing"))
    # Validated when each stage parses them, with that stage's own strict flags.
    stage_args: tuple[tuple[str, tuple[str, ...]], ...] = field(
        default=(),
        metadata=doc(
            'extra flags for one stage, repeatable, e.g. --stage-flags "train=--epochs 2"',
            flag="stage-flags",
            parse=_stage_flags,
            repeat=True,
            metavar="STAGE=FLAGS",
        ),
    )
    # Beam pipeline options for every Beam stage (what follows the flags on the command line).
    pipeline_args: tuple[str, ...] = field(default=(), metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"--end {self.end} is before --start {self.start}")
        unknown = [s for s in self.stages if s not in DAILY_STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(DAILY_STAGES)}")


def dates(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def plan(settings: BackfillSettings) -> list[tuple[dt.date, str, bool]]:
    """(date, stage, already_done) for every step of the backfill, in run order."""
    return [
        (d, s, is_done(settings.workdir, s, d))
        for d in dates(settings.start, settings.end)
        for s in settings.stages
    ]


def run(
    settings: BackfillSettings, on_event: Callable[[str], None] = print
) -> list[tuple[dt.date, str]]:
    """Run the backfill; returns the (date, stage) steps that ran. Raises StageFailed on failure."""
    ran: list[tuple[dt.date, str]] = []
    stage_args: dict[str, tuple[str, ...]] = {}
    for stage, flags in settings.stage_args:  # --stage-flags may name a stage more than once
        stage_args[stage] = stage_args.get(stage, ()) + flags
    for d in dates(settings.start, settings.end):
        day = DayRun(
            catalog=settings.catalog,
            workdir=settings.workdir,
            date=d,
            full=settings.full,
            pipeline_args=settings.pipeline_args,
            stage_args=stage_args,
        )
        ran += [(d, s) for s in run_day(day, settings.stages, on_event=on_event)]
    return ran


def cli_run(settings: BackfillSettings, pipeline_args: list[str]) -> None:
    """``vsearch backfill``: the plan (``--dry-run``) or the run; Beam options go to Beam stages."""
    settings = replace(settings, pipeline_args=tuple(pipeline_args))
    if settings.dry_run:
        for d, stage, done in plan(settings):
            print(f"{d}  {stage:<12} {'done, will skip' if done else 'will run'}")
        return
    try:
        ran = run(settings)
    except StageFailed as e:
        raise StageFailed(f"{e}. Fix the cause and run the same command again to resume.") from e
    print(f"backfill {settings.start}..{settings.end}: ran {len(ran)} step(s)")
