"""The stage registry, and running the daily stages for one date (backfill, the demo, the DAG).

Every stage is ``run(settings) -> Result`` (Beam stages also take Beam pipeline args): a frozen
settings dataclass in, a typed result out. ``run_day`` hands each result to the next stage: the
gate measures train's ``TrainResult.version``, embed re-embeds everything (``--full``) when the
gate's ``GateDecision.promoted``, publish flips CURRENT to build-index's
``BuildIndexResult.manifest_uri``. Settings are parsed from the same flags a user would type
(``vsearch.flags``), so a backfill, a DAG task and a hand-typed command do the same thing.

Each stage writes its run summary (the health record) and, last, its completion marker
(``runs/dt=D/STAGE.done``) itself. ``run_day`` skips a stage whose marker exists and reads the
result a later stage needs back from its run summary (``Result.from_summary``), which is how a
backfill resumes after a failure, in another process or on another machine. Both are
production's: a run for a candidate model (``--model V`` other than the published one) is
recorded apart (``core.runs``), so it never marks the day's stage done nor hands its
result (a candidate's index, say) to the next stage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import runs, storage
from vsearch import flags


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    settings: str  # "module:Class", a light module: --help must not load TensorFlow
    run: str  # "module:function": run(settings[, pipeline_args]) -> result
    result: str  # "module:Class" with from_summary(run summary) -> result
    beam: bool  # a Beam job: takes Beam pipeline options
    record: str = ""  # name of its run summary and completion marker (default: name)

    @property
    def record_name(self) -> str:
        return self.record or self.name


_COUNTS = "core.runs:Counts"
# Registry order = pipeline order.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "check-catalog",
            "Beam: validate a day's snapshot and read every image safely; dead-letter the bad ones",
            "pipelines.settings:CheckCatalogSettings",
            "pipelines.check_catalog:run",
            _COUNTS,
            beam=True,
            record="catalog",
        ),
        Stage(
            "preprocess",
            "Beam + TF Transform: decode, normalise, build label vocabularies, split train/eval",
            "pipelines.settings:PreprocessSettings",
            "pipelines.preprocess:run",
            _COUNTS,
            beam=True,
        ),
        Stage(
            "train",
            "train the multitask embedding model and export a raw-bytes SavedModel",
            "models.config:TrainConfig",
            "models.train:run",
            "models.settings:TrainResult",
            beam=False,
        ),
        Stage(
            "gate",
            "promote the candidate model (flip models/PUBLISHED) if it is good enough",
            "models.settings:GateSettings",
            "models.gate:run",
            "models.settings:GateDecision",
            beam=False,
        ),
        Stage(
            "embed",
            "Beam RunInference: embed new or changed images, write Parquet (incremental by default)",
            "pipelines.settings:EmbedSettings",
            "pipelines.embed:run",
            "pipelines.settings:EmbedResult",
            beam=True,
        ),
        Stage(
            "build-index",
            "Beam + faiss: train PCA + index once, add per shard, validate recall, write a manifest",
            "pipelines.build_index:BuildIndexSettings",
            "pipelines.build_index:run",  # build, then the no-match calibration
            "pipelines.build_index:BuildIndexResult",
            beam=True,
        ),
        Stage(
            "publish",
            "flip indexes/CURRENT to a validated manifest (compare-and-swap)",
            "index.publish:PublishSettings",
            "index.publish:run",
            "index.publish:PublishResult",
            beam=False,
        ),
    )
}

# The daily order (DESIGN.md). check-catalog is optional: preprocess and embed dead-letter bad
# inputs themselves, so the daily run does not pay for reading every image one more time.
DAILY_STAGES: tuple[str, ...] = ("preprocess", "train", "gate", "embed", "build-index", "publish")


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


def read_result(name: str, workdir: str, date: dt.date) -> Any:
    """The result production's run of a finished stage returned, read back from its summary."""
    stage = STAGES[name]
    try:
        summary = runs.read_summary(workdir, stage.record_name, date)
    except storage.StorageError as e:
        raise StageFailed(f"{name} has no run summary for {date}; run it first ({e})") from e
    return load(stage.result).from_summary(summary)


def result_to_json(result: Any) -> dict[str, Any]:
    """A stage's result as plain JSON values (an Airflow XCom, a log line)."""
    return dict(json.loads(json.dumps(dataclasses.asdict(result), default=str)))


def result_from_json(name: str, value: Mapping[str, Any]) -> Any:
    """The typed result of stage ``name`` back from ``result_to_json``."""
    return _from_json(load(STAGES[name].result), value)


def _from_json(cls: Any, value: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        v, tp = value[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            v = _from_json(tp, v)
        elif typing.get_origin(tp) is tuple:
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


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


def stage_argv(name: str, day: DayRun, results: Mapping[str, Any]) -> list[str]:
    """The flags of one stage on one date (what a user would type), from earlier results."""
    d = day.date.isoformat()
    argv = ["--workdir", day.workdir]
    if name in ("check-catalog", "preprocess", "embed", "build-index"):
        argv += ["--catalog", day.catalog, "--date", d]
    elif name == "train":
        argv += ["--date", d]
    elif name == "gate":  # its date is the candidate's
        argv += ["--candidate", _result("train", day, results).version]
    elif name == "publish":
        argv += ["--manifest", _result("build-index", day, results).manifest_uri, "--date", d]
    if name == "embed" and (day.full or _promoted(day, results)):
        argv.append("--full")
    return argv + list(day.stage_args.get(name, ()))


def _result(name: str, day: DayRun, results: Mapping[str, Any]) -> Any:
    return results[name] if name in results else read_result(name, day.workdir, day.date)


def _promoted(day: DayRun, results: Mapping[str, Any]) -> bool:
    """True when the gate promoted a new model that day: its embeddings start from scratch."""
    if "gate" not in results and not is_done(day.workdir, "gate", day.date):
        return False
    return bool(_result("gate", day, results).promoted)


def run_day(
    day: DayRun,
    stages: Sequence[str] = DAILY_STAGES,
    skip_done: bool = True,
    on_event: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``stages`` in order for one date; returns the results of the stages that ran."""
    results: dict[str, Any] = {}
    for name in stages:
        if skip_done and is_done(day.workdir, name, day.date):
            on_event(f"[{day.date}] {name}: already complete, skipped")
            continue
        on_event(f"[{day.date}] {name}: running")
        with runs.stopwatch() as t:
            results[name] = run_one(name, day, results)
        on_event(f"[{day.date}] {name}: done in {t['s']:.1f}s")
    return results


def run_one(name: str, day: DayRun, results: Mapping[str, Any] | None = None) -> Any:
    """One stage for one date, its inputs from ``results`` or the earlier stages' summaries."""
    try:
        argv = stage_argv(name, day, results or {})
        if STAGES[name].beam:
            argv += list(day.pipeline_args)
        settings, pipeline_args, _ = command(name).parse(argv)
        return run_stage(name, settings, pipeline_args)
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(f"{name} failed for {day.date}: {type(e).__name__}: {e}") from e
