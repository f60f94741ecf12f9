"""LookaheadDoFn: a DoFn whose per-element work runs in background threads, ahead of its outputs.

Why: in a fused Beam stage one thread runs every step in turn, so while the model step waits for
its call, the steps before it wait too, and while they read and decode the next photos, the
model waits. File reads, hashing and Pillow's decoding release the GIL, so a pool thread can do
that work for the next photos while the bundle's thread is inside the model call.

At most ``lookahead`` elements wait beyond the one being emitted. A subclass gives ``work`` (runs in a pool thread: no metrics, no outputs, only the element in and
a result out) and ``outputs`` (runs in the bundle's thread with that result: counters, tagged
outputs). Outputs keep their input order, window and timestamp. With ``threads`` = 0 both run in
line, element by element, as a plain DoFn would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue


class LookaheadDoFn(beam.DoFn):
    """Base class; see the module docstring. Subclasses that override ``setup`` call super's."""

    LOOKAHEAD = 128  # photos in flight: two model batches (~3.5 MB of pixels at 96 px)

    def __init__(self, threads: int = 0, lookahead: int = LOOKAHEAD) -> None:
        if threads < 0 or lookahead < 0:
            raise ValueError(f"need threads, lookahead >= 0, got {threads}, {lookahead}")
        self._threads = threads
        self._lookahead = lookahead

    def work(self, element: Any) -> Any:
        """The GIL-releasing part for one element; runs in a pool thread when threads > 0."""
        raise NotImplementedError

    def outputs(self, element: Any, result: Any) -> Iterator[Any]:
        """What ``element`` emits given ``work``'s result; runs in the bundle's thread."""
        raise NotImplementedError

    def setup(self) -> None:
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 0 else None

    def start_bundle(self) -> None:
        self._pending: deque[tuple[Any, Future[Any], Any, Any]] = deque()

    def process(
        self,
        element: Any,
        window: Any = beam.DoFn.WindowParam,
        timestamp: Any = beam.DoFn.TimestampParam,
    ) -> Iterator[Any]:
        if self._pool is None:
            yield from self.outputs(element, self.work(element))
            return
        self._pending.append((element, self._pool.submit(self.work, element), window, timestamp))
        while len(self._pending) > self._lookahead:
            yield from self._emit_oldest()

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            yield from self._emit_oldest()

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _emit_oldest(self) -> Iterator[Any]:
        # finish_bundle's outputs need their window and timestamp spelt out (Beam's rule).
        element, future, window, timestamp = self._pending.popleft()
        for out in self.outputs(element, future.result()):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    out.tag, WindowedValue(out.value, timestamp, (window,))
                )
            else:
                yield WindowedValue(out, timestamp, (window,))
