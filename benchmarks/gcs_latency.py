"""What the gs:// benchmarks share: one way against ours on the loopback GCS server, HTTP
requests counted at the client and a sleep added to every request (``--latency-ms``), standing in
for a real bucket's round trip (the loopback server answers in well under a millisecond)."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Result = tuple[float, int]  # median wall seconds, HTTP requests of one run
Row = tuple[float, Result, Result]  # added latency (ms), the other way, ours


@contextlib.contextmanager
def loopback_workdir(bucket: str) -> Iterator[str]:
    """A workdir ``gs://BUCKET/w`` on a fresh loopback server, for the length of the block."""
    from benchmarks import gcs_emulator
    from core import gcs

    with gcs_emulator.running():
        gcs.client().create_bucket(bucket)
        yield f"gs://{bucket}/w"


class RequestMeter:
    """What ``metered_requests`` saw: ``count`` HTTP requests so far; ``delay_s`` is slept in
    every request, standing in for a real bucket's round trip (the loopback server answers in
    well under a millisecond)."""

    def __init__(self) -> None:
        self.count = 0
        self.delay_s = 0.0
        self._lock = threading.Lock()

    def request(self) -> None:
        with self._lock:
            self.count += 1
        if self.delay_s:
            time.sleep(self.delay_s)


@contextlib.contextmanager
def metered_requests() -> Iterator[RequestMeter]:
    """Count (and delay) every HTTP request of google-cloud-storage and of Beam's GCS client: both
    send through ``requests.Session``."""
    import requests

    meter = RequestMeter()
    real = requests.Session.request

    def metered(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter.request()
        return real(self, *args, **kwargs)

    requests.Session.request = metered  # type: ignore[method-assign]
    try:
        yield meter
    finally:
        requests.Session.request = real  # type: ignore[method-assign]


def add_latency_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--latency-ms",
        type=float,
        nargs="+",
        default=[0.0, 30.0],
        help="sleep added to every HTTP request (0: the loopback server as it is)",
    )


def compare(
    latencies_ms: Sequence[float],
    set_delay: Callable[[float], None],
    measure: Callable[[], tuple[Result, Result]],
    other: str,
) -> list[Row]:
    """``measure()`` (the other way's result, ours) at each added latency, printed as it goes."""
    rows = []
    for latency in latencies_ms:
        set_delay(latency / 1000)
        before, ours = measure()
        rows.append((latency, before, ours))
        print(
            f"+{latency:g} ms: {other} {before[0]:.2f} s ({before[1]} requests), "
            f"ours {ours[0]:.2f} s ({ours[1]} requests), x{before[0] / ours[0]:.1f}",
            flush=True,
        )
    return rows


def table(rows: Sequence[Row], other: str) -> str:
    """The Markdown table of ``compare``'s rows."""
    lines = [
        f"| added latency per request | {other}: wall (requests) | ours: wall (requests) | speed-up |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| +{lat:g} ms | {b[0]:.2f} s ({b[1]}) | {o[0]:.2f} s ({o[1]}) | {b[0] / o[0]:.1f}x |"
        for lat, b, o in rows
    ]
    return "\n".join(lines)
