"""Run summaries (``WORKDIR/runs/dt=D/STAGE.json``) and completion markers (``STAGE.done``).

Every stage accounts for every input: ``read == ok + skipped + dead_lettered``. A summary that
does not add up is a bug in the stage, so writing it raises instead of hiding it. A stage that
finished for a date writes its completion marker last (``complete``), whoever ran it (a user, a
backfill, the DAG), so a backfill knows what is already done.

Production's and candidates' runs never share a file. A run for a model other than the
published one (``vsearch embed --model V``, ``vsearch build-index --model-version V``: the model
it used is ``extra["model_version"]``) is a candidate's: its summary and marker go to
``runs/model=V/dt=D/`` (``candidate_of``), so trying a candidate, or two, never changes what the
health page, the DAG and a backfill read for that day (``read_summary`` and ``is_done`` read
production's unless asked for a candidate's). While no model is published every run is
production's (there is no production to protect). Train and gate runs are production's: they
make and judge the candidates. Every summary names its model (``model_version``: the model the
run used, made or judged; null for stages without one) and says whether it is production's.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from core import paths, pointers, storage

METRICS_NAMESPACE = "vsearch"
# Where a summary's ``extra`` names its model: embed and build-index name the one they used as
# ``model_version``; train names the one it made, the gate the one it judged.
_MODEL_KEY = {"train": "version", "gate": "candidate"}


@dataclass(frozen=True)
class RunSummary:
    stage: str
    date: str
    read: int
    ok: int
    dead_lettered: int
    skipped: int = 0
    wall_s: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.read != self.ok + self.skipped + self.dead_lettered:
            raise ValueError(
                f"{self.stage} summary does not add up: read={self.read} but ok={self.ok} + "
                f"skipped={self.skipped} + dead_lettered={self.dead_lettered}"
            )

    @property
    def throughput_per_s(self) -> float:
        return (self.ok / self.wall_s) if self.wall_s > 0 else 0.0

    @property
    def model_version(self) -> str | None:
        """The model the run used (embed, build-index), made (train) or judged (gate)."""
        value = self.extra.get(_MODEL_KEY.get(self.stage, "model_version"))
        return str(value) if value else None

    def to_json(self, production: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        d["model_version"] = self.model_version
        d["production"] = production
        d["throughput_per_s"] = round(self.throughput_per_s, 2)
        d["wall_s"] = round(self.wall_s, 3)
        d["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return d

    def one_line(self) -> str:
        parts = [
            f"[{self.stage} dt={self.date}] read={self.read} ok={self.ok}",
            f"skipped={self.skipped}" if self.skipped else "",
            f"dead_lettered={self.dead_lettered}",
            f"in {self.wall_s:.1f}s ({self.throughput_per_s:.1f}/s)",
        ]
        return " ".join(p for p in parts if p)


def candidate_of(workdir: str, summary: RunSummary) -> str | None:
    """The candidate model a run was for, or None when the run is production's (module doc)."""
    used = summary.extra.get("model_version")
    return candidate_for(workdir, str(used) if used else None)


def candidate_for(workdir: str, model_version: str | None) -> str | None:
    """``model_version`` when a run with it is a candidate's, None when it is production's: no
    model named, or the published one, or none published (module doc)."""
    if not model_version:
        return None
    published = pointers.read_pointer(paths.published_model_pointer(workdir)).value
    return None if published is None or model_version == published else model_version


def write_summary(workdir: str, summary: RunSummary, echo: bool = True) -> str:
    """Write the summary JSON (production's or the candidate's, ``candidate_of``) and print its
    one-line form; returns the JSON's URI."""
    return _write(workdir, summary, candidate_of(workdir, summary), echo)


def _write(workdir: str, summary: RunSummary, candidate: str | None, echo: bool) -> str:
    uri = paths.run_summary(workdir, summary.stage, summary.date, candidate)
    doc = summary.to_json(production=candidate is None)
    storage.write_text(uri, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if echo:
        where = f" (candidate model {candidate}, not the published one: {uri})" if candidate else ""
        print(summary.one_line() + where, flush=True)
    return uri


def mark_done(workdir: str, stage: str, date: dt.date | str, candidate: str | None = None) -> None:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    storage.write_text(paths.completion_marker(workdir, stage, date, candidate), stamp + "\n")


def is_done(workdir: str, stage: str, date: dt.date | str, candidate: str | None = None) -> bool:
    """Production's stage finished for ``date`` (or, given ``candidate``, that model's run)."""
    return storage.exists(paths.completion_marker(workdir, stage, date, candidate))


def complete(workdir: str, summary: RunSummary) -> None:
    """A stage finished: its run summary, then (last) its completion marker, both in
    production's folder or the candidate's (``candidate_of``)."""
    candidate = candidate_of(workdir, summary)
    _write(workdir, summary, candidate, echo=True)
    mark_done(workdir, summary.stage, summary.date, candidate)


@dataclass(frozen=True)
class Counts:
    """The result of a stage whose output is files: how many inputs it read, wrote, dropped."""

    read: int
    ok: int
    dead_lettered: int
    skipped: int = 0
    wall_s: float = 0.0

    @classmethod
    def of(cls, summary: RunSummary) -> Counts:
        return cls(summary.read, summary.ok, summary.dead_lettered, summary.skipped, summary.wall_s)


def read_summary(
    workdir: str, stage: str, date: dt.date | str, candidate: str | None = None
) -> dict[str, Any]:
    """Production's run summary of ``stage`` for ``date`` (or, given ``candidate``, the summary
    of the run for that model version)."""
    return dict(json.loads(storage.read_text(paths.run_summary(workdir, stage, date, candidate))))


class Recorded(NamedTuple):
    """One of production's recorded runs: its summary and whether its stage completed."""

    summary_uri: str
    done: bool  # the completion marker exists; a summary without one: the run failed


def production_runs(workdir: str) -> dict[str, dict[str, Recorded]]:
    """Production's recorded runs, day -> stage -> Recorded (never a candidate's); two listings."""
    root = storage.normalize(paths.runs_root(workdir))

    def found(suffix: str) -> dict[tuple[str, str], str]:
        out = {}
        for uri in storage.glob(storage.join(root, "dt=*", f"*{suffix}")):
            folder = storage.parent(uri)  # on gs:// a glob's ``*`` may cross '/'
            if storage.parent(folder) == root:
                day = storage.basename(folder)[len("dt=") :]
                out[(day, storage.basename(uri)[: -len(suffix)])] = uri
        return out

    done = found(".done")
    by_day: dict[str, dict[str, Recorded]] = {}
    for (day, stage), uri in found(".json").items():
        by_day.setdefault(day, {})[stage] = Recorded(uri, (day, stage) in done)
    return by_day


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["s"]`` is the wall time in seconds."""
    t = {"start": time.perf_counter(), "s": 0.0}
    try:
        yield t
    finally:
        t["s"] = time.perf_counter() - t["start"]


def counters(result: Any, namespace: str = METRICS_NAMESPACE) -> dict[str, int]:
    """Committed Beam counter values of a finished pipeline, by counter name."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(c.committed or 0)
    return out
