"""The google-cloud-storage client that ``core.storage`` and ``core.pointers`` use for gs://.

Imported lazily where it is needed (the client library costs a second of import time), and it
never imports Beam at module level: a light command must not pay Beam's import either.

Against a GCS emulator (``STORAGE_EMULATOR_HOST``, the variable google-cloud-storage itself
reads) both clients that touch gs:// go anonymous: ours in :func:`client`, Beam's in
:func:`anonymous_beam_against_emulator`. The second is not a test helper, although the tests are
its main user: every ``vsearch`` stage process started against an emulator needs it, and the
tests start such processes themselves (the DAG's Beam tasks run ``python -m vsearch STAGE`` as
subprocesses of Airflow against the loopback server, ``tests/test_dag_gcs.py``), as does anyone
who runs the stages against fake-gcs-server by hand. Without it each such process spends ~15 s
retrying Google default credentials. It does nothing unless the variable is set.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

PREFIX = "gs://"
EMULATOR_HOST = "STORAGE_EMULATOR_HOST"


def split(uri: str) -> tuple[str, str]:
    """``gs://bucket/name`` -> ``(bucket, name)``; ValueError for any other URI."""
    if not uri.startswith(PREFIX):
        raise ValueError(f"not a gs:// URI: {uri}")
    bucket, _, name = uri[len(PREFIX) :].partition("/")
    return bucket, name


@functools.cache
def client() -> Any:
    """A google-cloud-storage client; anonymous against an emulator (STORAGE_EMULATOR_HOST)."""
    from google.cloud import storage  # type: ignore[attr-defined]

    if os.environ.get(EMULATOR_HOST):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="vsearch-test", credentials=AnonymousCredentials())
    return storage.Client()


def not_found() -> type[Exception]:
    """The client's error for a missing object or bucket (imported only when needed)."""
    from google.api_core.exceptions import NotFound

    return NotFound


def retry() -> Any:
    """google-cloud-storage's default retry (transient errors, backoff), as Beam's client uses."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def anonymous_beam_against_emulator() -> None:
    """Against a GCS emulator there are no credentials to find; tell Beam so up front.

    Otherwise Beam spends ~15 s per process retrying Google default credentials before it
    falls back to anonymous access (private API; harmless when absent). Called before a Beam
    job starts (``pipelines.stage``), never at import.
    """
    if not os.environ.get(EMULATOR_HOST):
        return
    with contextlib.suppress(Exception):
        from apache_beam.internal.gcp import auth

        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None
