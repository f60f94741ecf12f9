"""Progress of a long stage while it runs: elements done so far and the rate, every few seconds.

``pcoll | "Progress" >> LogProgress("embed", "images embedded")`` is a side branch: it passes
nothing on, counts each element in a Beam counter (namespace STAGE, name ``progress``: live in
Dataflow's job page; not part of the run summary) and, in each worker process, prints
``[embed] 12,345 images embedded (412.3/s)`` to stderr at most every ``every_s`` seconds. On the
DirectRunner that is the user's terminal; on Dataflow, each worker's log.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

# Per process: one tally per LogProgress application, shared by the process's bundle threads.
_LOCK = threading.Lock()
_TALLIES: dict[str, list[float]] = {}  # key -> [count, started, last printed]


def _one(element: Any) -> int:
    return 1


class _Count(beam.DoFn):
    def __init__(self, stage: str, what: str, every_s: float, weight: Callable[[Any], int]) -> None:
        self.stage, self.what, self.every_s, self.weight = stage, what, every_s, weight
        self.key = uuid.uuid4().hex  # one tally per pipeline, not per process lifetime
        self.counter = Metrics.counter(stage, "progress")

    def process(self, element: Any) -> Iterable[None]:
        n = self.weight(element)
        self.counter.inc(n)
        now = time.monotonic()
        with _LOCK:
            tally = _TALLIES.setdefault(self.key, [0, now, now])
            tally[0] += n
            due = now - tally[2] >= self.every_s
            if due:
                tally[2] = now
            count, elapsed = int(tally[0]), now - tally[1]
        if due:
            rate = f"{count / elapsed:,.1f}/s" if elapsed > 0 else "-"
            print(f"[{self.stage}] {count:,} {self.what} ({rate})", file=sys.stderr, flush=True)
        return ()


class LogProgress(beam.PTransform):
    """Counts and periodically reports the elements of a PCollection (``weight``: how many things
    an element holds, e.g. a batch's rows; default 1); outputs nothing."""

    def __init__(
        self,
        stage: str,
        what: str,
        every_s: float = 15.0,
        weight: Callable[[Any], int] = _one,
    ) -> None:
        super().__init__()
        # 15 s: a line a user notices on a terminal, without flooding a worker's log.
        self.stage, self.what, self.every_s, self.weight = stage, what, every_s, weight

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Count" >> beam.ParDo(
            _Count(self.stage, self.what, self.every_s, self.weight)
        )
