"""`vsearch` keeps TensorFlow's and absl's start-up noise off unless asked (--verbose)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vsearch.app import quiet

REPO = Path(__file__).resolve().parents[1]


def test_configure_removes_the_flag_and_says_whether_the_run_is_verbose() -> None:
    assert quiet.configure(["embed", "--verbose", "--full"])[1] is True
    assert quiet.configure(["embed", "--verbose", "--full"])[0] == ["embed", "--full"]
    assert quiet.configure(["embed", "--full"]) == (["embed", "--full"], False)


@pytest.mark.timeout(600)
def test_a_tensorflow_stage_prints_only_its_error_unless_verbose(tmp_path: Path) -> None:
    """gate imports TensorFlow; a missing candidate is a user error: one line, no TF banners."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    cmd = [sys.executable, "-m", "vsearch.app.cli", "gate", "--workdir", str(tmp_path)]
    runs = [
        subprocess.Popen(
            [*cmd, "--candidate", "nope", *extra],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in ((), ("--verbose",))
    ]
    (_, quiet_err), (_, verbose_err) = (r.communicate(timeout=500) for r in runs)
    assert [r.returncode for r in runs] == [1, 1]
    error = "vsearch gate: error: model nope has no config.json"
    assert quiet_err.startswith(error) and len(quiet_err.strip().splitlines()) == 1, quiet_err
    lines = verbose_err.strip().splitlines()
    assert lines[-1].startswith(error) and len(lines) > 1  # TensorFlow's own start-up lines
