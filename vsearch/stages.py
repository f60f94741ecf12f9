"""Running the daily stages for one date: a backfill, the demo and the DAG's tasks.

The stages, their order and their hand-offs are the registry's (``vsearch.registry``). Each
stage's settings are built from typed values, never from another stage's output turned back into
flags: the day's fields (catalog, workdir, date) and, per the registry's ``inputs``, fields of
earlier stages' results (the gate measures train's ``TrainResult.version``). A user's extra flags
for a stage (``DayRun.stage_args``) are parsed by the same command line a user would type.

Each stage writes its run summary (the health record) and, last, its completion marker
(``runs/dt=D/STAGE.done``) itself. ``run_day`` skips a stage whose marker exists and reads the
result a later stage needs back from its run summary (``core.results.from_summary``), which is
how a backfill resumes after a failure, in another process or on another machine. Both are
production's: a run for a candidate model (``--model V`` other than the published one) is
recorded apart (``core.runs``), so it never marks the day's stage done nor hands its result (a
candidate's index, say) to the next stage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import results, runs, storage
from vsearch import flags
from vsearch.registry import DAILY_STAGES, STAGES, Stage

__all__ = ["DAILY_STAGES", "STAGES", "DayRun", "Stage", "StageFailed", "run_day", "run_one"]


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and date."""


def load(ref: str) -> Any:
    """``"module:attr"`` -> the attribute (stage modules load only when their stage runs)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def command(name: str) -> flags.Command:
    """The command line of a stage, generated from its settings dataclass."""
    stage = STAGES[name]
    return flags.Command(f"vsearch {name}", load(stage.settings), stage.help, beam=stage.beam)


def run_stage(name: str, settings: Any, pipeline_args: Sequence[str] = ()) -> Any:
    """Run one stage with its settings; returns its typed result."""
    stage = STAGES[name]
    fn = load(stage.run)
    return fn(settings, list(pipeline_args)) if stage.beam else fn(settings)


def is_done(workdir: str, name: str, date: dt.date) -> bool:
    """Production's run of stage ``name`` finished for ``date``."""
    return runs.is_done(workdir, STAGES[name].record_name, date)


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


def run_day(
    day: DayRun,
    stages: Sequence[str] = DAILY_STAGES,
    skip_done: bool = True,
    on_event: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``stages`` in order for one date; returns the results of the stages that ran."""
    done: dict[str, Any] = {}
    for name in stages:
        if skip_done and is_done(day.workdir, name, day.date):
            on_event(f"[{day.date}] {name}: already complete, skipped")
            continue
        on_event(f"[{day.date}] {name}: running")
        with runs.stopwatch() as t:
            done[name] = run_one(name, day, done)
        on_event(f"[{day.date}] {name}: done in {t['s']:.1f}s")
    return done


def run_one(name: str, day: DayRun, earlier: Mapping[str, Any] | None = None) -> Any:
    """One stage for one date, its inputs from ``earlier`` results or their run summaries."""
    try:
        settings, pipeline_args = settings_for(name, day, earlier or {})
        if any(a.split("=", 1)[0] == "--template_location" for a in pipeline_args):
            raise StageFailed(
                f"{name} for {day.date}: a backfill runs each stage to its end, and "
                "--template_location only describes the job; launch the template, then run "
                f"`vsearch finish {name}`"
            )
        return run_stage(name, settings, pipeline_args)
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(f"{name} failed for {day.date}: {type(e).__name__}: {e}") from e


def settings_for(name: str, day: DayRun, earlier: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The settings of stage ``name`` on ``day`` (and its Beam pipeline args): the day's fields
    and the registry's inputs from earlier results, then the user's extra flags for the stage."""
    stage = STAGES[name]
    cls = load(stage.settings)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    given: dict[str, Any] = {}
    day_fields = {"catalog": day.catalog, "workdir": day.workdir, "date": day.date}
    if hints.get("date") is str:  # a field typed str holds the ISO date
        day_fields["date"] = day.date.isoformat()
    given.update({k: v for k, v in day_fields.items() if k in names})
    for i in stage.inputs:
        result = result_of(i.stage, day, earlier, optional=i.optional)
        if result is not None:
            given[i.field] = getattr(result, i.result_field)
    if day.full and "full" in names:  # asked for the day, whatever the gate decided
        given["full"] = True
    argv = list(day.stage_args.get(name, ()))
    if stage.beam:
        argv += list(day.pipeline_args)
    settings, pipeline_args, _ = command(name).parse(argv, given)
    return settings, pipeline_args


def result_of(name: str, day: DayRun, earlier: Mapping[str, Any], optional: bool = False) -> Any:
    """Stage ``name``'s result for the day: from ``earlier`` or production's run summary.
    ``optional``: None when the stage did not complete that day."""
    if name in earlier:
        return earlier[name]
    if optional and not is_done(day.workdir, name, day.date):
        return None
    return read_result(name, day.workdir, day.date)


def read_result(name: str, workdir: str, date: dt.date) -> Any:
    """The result production's run of a finished stage returned, read back from its summary."""
    stage = STAGES[name]
    try:
        summary = runs.read_summary(workdir, stage.record_name, date)
    except storage.StorageError as e:
        raise StageFailed(f"{name} has no run summary for {date}; run it first ({e})") from e
    return results.from_summary(load(stage.result), summary)


def result_to_json(result: Any) -> dict[str, Any]:
    """A stage's result as plain JSON values (an Airflow XCom, a log line)."""
    return results.to_json(result)


def result_from_json(name: str, value: Mapping[str, Any]) -> Any:
    """The typed result of stage ``name`` back from ``result_to_json``."""
    return results.from_json(load(STAGES[name].result), value)
