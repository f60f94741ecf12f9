"""The CLI lists every stage of DESIGN.md and every stage explains its flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vsearch.app import cli

DESIGN_STAGES = [
    "preprocess",
    "train",
    "gate",
    "embed",
    "build-index",
    "publish",
    "query",
    "backfill",
    "demo",
]


def _vsearch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsearch.app.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_stage() -> None:
    out = _vsearch("--help")
    assert out.returncode == 0
    for stage in DESIGN_STAGES + ["generate-catalog", "check-catalog"]:
        assert f"  {stage} " in out.stdout, stage


def test_unknown_command_is_a_clear_error() -> None:
    out = _vsearch("embedd")
    assert out.returncode == 2
    assert "unknown command 'embedd'" in out.stderr


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_explains_its_flags(command: str) -> None:
    out = _vsearch(command, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
    # Every command that reads a working directory says so in its help.
    # The human-evaluation commands after eval-sample read one task file (under WORKDIR/eval/).
    if command in ("rate", "eval-report", "eval-simulate"):
        assert "--task" in out.stdout, out.stdout
    elif command not in ("generate-catalog",):
        assert "--workdir" in out.stdout, out.stdout
