"""``vsearch backfill --start D1 --end D2``: the daily stages for every date in a range.

Dates run in order; within a date, stages run in the daily order. A stage already complete for a
date (its completion marker exists) is skipped, so after a failure or a kill the same command
resumes where it stopped, and re-running a finished range does nothing. Every stage is itself
idempotent for its date, so a stage killed half-way is simply run again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vsearch.app.stages import DAILY_STAGES, DayRun, StageFailed, is_done, run_day
from vsearch.core import paths


@dataclass(frozen=True)
class BackfillSettings:
    catalog: str
    workdir: str
    start: dt.date
    end: dt.date  # inclusive, as Airflow's backfill and most engineers read a date range
    stages: tuple[str, ...] = DAILY_STAGES
    full: bool = False
    pipeline_args: tuple[str, ...] = ()
    stage_args: tuple[tuple[str, tuple[str, ...]], ...] = ()

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
    for d in dates(settings.start, settings.end):
        day = DayRun(
            catalog=settings.catalog,
            workdir=settings.workdir,
            date=d,
            full=settings.full,
            pipeline_args=settings.pipeline_args,
            stage_args=dict(settings.stage_args),
        )
        ran += [(d, s) for s in run_day(day, settings.stages, on_event=on_event)]
    return ran


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vsearch backfill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other flag (e.g. --runner DataflowRunner ...) goes to every Beam stage.",
    )
    p.add_argument(
        "--catalog", required=True, help="catalog root URI (holds dt=YYYY-MM-DD/ snapshots)"
    )
    p.add_argument("--workdir", required=True, help="working directory URI for every output")
    p.add_argument("--start", required=True, type=paths.parse_date, help="first date, YYYY-MM-DD")
    p.add_argument("--end", required=True, type=paths.parse_date, help="last date (inclusive)")
    p.add_argument(
        "--stages",
        default=",".join(DAILY_STAGES),
        help=f"comma-separated subset, run in daily order (default: {','.join(DAILY_STAGES)})",
    )
    p.add_argument("--full", action="store_true", help="re-embed every image on every date")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    p.add_argument(
        "--stage-flags",
        action="append",
        default=[],
        metavar="STAGE=FLAGS",
        help='extra flags for one stage, repeatable, e.g. --stage-flags "train=--epochs 2"',
    )
    return p


def _stage_flags(values: Sequence[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out: dict[str, tuple[str, ...]] = {}
    for value in values:
        stage, sep, flags = value.partition("=")
        if not sep or stage not in DAILY_STAGES:
            raise ValueError(
                f"--stage-flags wants STAGE=FLAGS with STAGE in {DAILY_STAGES}, got {value!r}"
            )
        out[stage] = out.get(stage, ()) + tuple(flags.split())
    return tuple(out.items())


def main(argv: Sequence[str] | None = None) -> int:
    args, pipeline_args = _parser().parse_known_args(argv)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    settings = BackfillSettings(
        catalog=args.catalog,
        workdir=args.workdir,
        start=args.start,
        end=args.end,
        stages=tuple(s for s in DAILY_STAGES if s in wanted)
        + tuple(s for s in wanted if s not in DAILY_STAGES),
        full=args.full,
        pipeline_args=tuple(pipeline_args),
        stage_args=_stage_flags(args.stage_flags),
    )
    if args.dry_run:
        for d, stage, done in plan(settings):
            print(f"{d}  {stage:<12} {'done, will skip' if done else 'will run'}")
        return 0
    try:
        ran = run(settings)
    except StageFailed as e:
        print(
            f"vsearch backfill: {e}\nFix the cause and run the same command again to resume.",
            file=sys.stderr,
        )
        return 1
    print(f"backfill {settings.start}..{settings.end}: ran {len(ran)} step(s)")
    return 0
