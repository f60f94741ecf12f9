"""Shared fixtures: a real GCS API server on loopback, seeded data, Beam options."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# Quiet TensorFlow's start-up chatter in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a ``slow`` test first (each file keeps its own order): ``make test`` hands
    whole files to two workers, and a long file started last would leave one worker idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """fake-gcs-server on 127.0.0.1; sets STORAGE_EMULATOR_HOST for google-cloud-storage and Beam."""
    from benchmarks import gcs_emulator

    with gcs_emulator.running() as url:
        yield url


@pytest.fixture()
def gcs_bucket(gcs_server: str) -> str:
    """A fresh bucket on the loopback GCS server; returns ``gs://NAME``."""
    from core import gcs

    name = f"vsearch-test-{uuid.uuid4().hex[:10]}"
    gcs.client().create_bucket(name)
    return f"gs://{name}"


# ------------------------------------------------------------------ a tiny trained pipeline

# Flags that make every stage cheap on a tiny catalog; the quality of such a model is not the
# point of the tests that use it (the model's own tests and benchmarks measure quality).
TINY_IMAGE_SIZE = 64
TINY_STAGE_FLAGS: dict[str, tuple[str, ...]] = {
    "preprocess": ("--image-size", str(TINY_IMAGE_SIZE)),
    # Train reads the image size from preprocess's output.
    "train": ("--epochs", "1", "--batch-size", "32", "--localiser-steps", "20"),
    # A one-epoch model on 40 listings is not clearly better than the same-run baselines: let
    # the first model through (the gate's own tests judge real models against the baselines).
    "gate": ("--no-beat-baselines",),
}


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A generated catalog of 3 daily snapshots (2026-01-01..03), 40 listings, 64 px photos."""
    from synthetic.generate import generate_catalog

    out = str(tmp_path_factory.mktemp("tiny-catalog"))
    generate_catalog(
        out, listings=40, days=3, seed=11, image_size=TINY_IMAGE_SIZE, progress_every=10**9
    )
    return out


@pytest.fixture(scope="session")
def trained_workdir(tiny_catalog: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A workdir where day 1 was preprocessed, trained and gated (a published model exists).

    Session-scoped because training is the slow part; tests copy it (``copy_workdir``).
    """
    import datetime as dt

    from vsearch.stages import DayRun, run_day

    workdir = str(tmp_path_factory.mktemp("trained") / "work")
    day = DayRun(tiny_catalog, workdir, dt.date(2026, 1, 1), stage_args=TINY_STAGE_FLAGS)
    run_day(day, ("preprocess", "train", "gate"))
    return workdir


def copy_workdir(src: str, dst: str) -> str:
    import shutil

    shutil.copytree(src, dst)
    return dst
