"""Run a Python snippet in a fresh interpreter from the repository root, as a CLI user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_json(code: str, *argv: str) -> tuple[Any, str]:
    """Run ``code`` (which prints a JSON line last) with ``argv``; returns that JSON value and
    the process's whole output. Fails the test, with its stderr, when the process fails."""
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr
