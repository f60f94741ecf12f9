"""The layers in the folder tree hold: import-linter's contracts (pyproject.toml) are kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_back_arrow_is_caught(tmp_path: Path) -> None:
    """The contract is live: an index module importing a network module breaks it."""
    bad = ROOT / "index" / "_arch_probe_back_arrow.py"
    bad.write_text("import models.model  # noqa: F401\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        done = subprocess.run(
            [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
    finally:
        bad.unlink()
    assert done.returncode != 0
    assert "index._arch_probe_back_arrow -> models.model" in done.stdout
