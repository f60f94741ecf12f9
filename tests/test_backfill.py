"""`vsearch backfill`: dates in order, completion markers, resume after a kill, no duplicates."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from core import paths, pointers, storage
from tests.conftest import copy_workdir
from vsearch import backfill, cli

STAGES = "embed,build-index,publish"


def _cmd(catalog: str, workdir: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vsearch", "backfill",
        "--catalog", catalog, "--workdir", workdir,
        "--start", "2026-01-01", "--end", "2026-01-03", "--stages", STAGES, *extra,
    ]  # fmt: skip


def test_dry_run_prints_the_plan(
    tiny_catalog: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["backfill", "--catalog", tiny_catalog, "--workdir", str(tmp_path), "--start", "2026-01-01",
         "--end", "2026-01-02", "--stages", STAGES, "--dry-run"]
    )  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all("will run" in line for line in lines)
    assert lines[0].startswith("2026-01-01  embed") and lines[-1].startswith("2026-01-02  publish")
    assert not os.listdir(tmp_path)  # a dry run writes nothing


def test_bad_range_and_stage_are_clear_errors(tiny_catalog: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before --start"):
        backfill.BackfillSettings(
            tiny_catalog, str(tmp_path), dt.date(2026, 1, 3), dt.date(2026, 1, 1)
        )
    with pytest.raises(ValueError, match="unknown stage"):
        backfill.BackfillSettings(
            tiny_catalog,
            str(tmp_path),
            dt.date(2026, 1, 1),
            dt.date(2026, 1, 1),
            stages=("embedd",),
        )


@pytest.mark.slow
def test_killed_backfill_resumes_without_duplicates(
    tiny_catalog: str, trained_workdir: str, tmp_path: Path
) -> None:
    workdir = copy_workdir(trained_workdir, str(tmp_path / "work"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Kill it for real (SIGKILL, no clean-up) once day 2's embed has finished.
    proc = subprocess.Popen(
        _cmd(tiny_catalog, workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    marker = paths.completion_marker(workdir, "embed", dt.date(2026, 1, 2))
    deadline = time.monotonic() + 600
    while not storage.exists(marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, (
        "backfill ended before it could be killed:\n" + proc.stdout.read().decode()[-3000:]
    )  # type: ignore[union-attr]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not storage.exists(paths.completion_marker(workdir, "publish", dt.date(2026, 1, 3)))

    resumed = subprocess.run(
        _cmd(tiny_catalog, workdir), env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[2026-01-01] embed: already complete, skipped" in resumed.stdout
    assert "[2026-01-02] embed: already complete, skipped" in resumed.stdout
    assert "[2026-01-03] publish: done" in resumed.stdout

    # No (listing_id, image_index, image_sha256) was embedded twice for the model version.
    version = pointers.read_pointer(paths.published_model_pointer(workdir)).value
    assert version
    table = pads.dataset(paths.embeddings_root(workdir, version), format="parquet").to_table(
        columns=["listing_id", "image_index", "image_sha256"]
    )
    keys = list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    assert len(keys) == len(set(keys)) > 0

    # CURRENT names a validated day-3 index that answers: each listing's own photo finds it.
    from core.embeddings import read_current_table
    from index.searcher import Searcher

    current = read_current_table(tiny_catalog, workdir, dt.date(2026, 1, 3), version)
    with Searcher.open(workdir) as searcher:
        assert searcher.manifest.ntotal == current.num_rows
        vectors = (
            current.column("embedding")
            .combine_chunks()
            .flatten()
            .to_numpy()
            .reshape(current.num_rows, -1)
        )
        hits = searcher.search_vectors(vectors[:20], k=5)
    own = current.column("listing_id").to_pylist()[:20]
    assert sum(h[0].listing_id == lid for h, lid in zip(hits, own, strict=True)) >= 18

    # A finished range is a no-op.
    again = subprocess.run(
        _cmd(tiny_catalog, workdir), env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0 and "ran 0 step(s)" in again.stdout
