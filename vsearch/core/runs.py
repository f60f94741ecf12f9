"""Run summaries (``WORKDIR/runs/dt=D/STAGE.json``) and completion markers (``STAGE.done``).

Every stage accounts for every input: ``read == ok + skipped + dead_lettered``. A summary that
does not add up is a bug in the stage, so writing it raises instead of hiding it. A stage that
finished for a date writes its completion marker last (``complete``), whoever ran it (a user, a
backfill, the DAG), so a backfill knows what is already done.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from vsearch.core import paths, storage

METRICS_NAMESPACE = "vsearch"


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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
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


def write_summary(workdir: str, summary: RunSummary, echo: bool = True) -> str:
    """Write the summary JSON and print its one-line form; returns the JSON's URI."""
    uri = paths.run_summary(workdir, summary.stage, summary.date)
    storage.write_text(uri, json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n")
    if echo:
        print(summary.one_line(), flush=True)
    return uri


def mark_done(workdir: str, stage: str, date: dt.date | str) -> None:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    storage.write_text(paths.completion_marker(workdir, stage, date), stamp + "\n")


def is_done(workdir: str, stage: str, date: dt.date | str) -> bool:
    return storage.exists(paths.completion_marker(workdir, stage, date))


def complete(workdir: str, summary: RunSummary) -> None:
    """A stage finished: its run summary, then (last) its completion marker."""
    write_summary(workdir, summary)
    mark_done(workdir, summary.stage, summary.date)


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

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> Counts:
        return cls(
            int(summary["read"]),
            int(summary["ok"]),
            int(summary["dead_lettered"]),
            int(summary.get("skipped", 0)),
            float(summary.get("wall_s", 0.0)),
        )


def read_summary(workdir: str, stage: str, date: dt.date | str) -> dict[str, Any]:
    return dict(json.loads(storage.read_text(paths.run_summary(workdir, stage, date))))


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
