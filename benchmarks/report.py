"""BENCHMARKS.md is written in sections, one per benchmark, between HTML comment markers.

Each benchmark rewrites only its own section (``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``),
so benchmarks can be run one at a time without losing the others' figures.
"""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
PLOTS = REPO / "benchmarks" / "plots"

HEADER = """# Benchmarks

Written by `make bench` (each benchmark rewrites its own section). Machines are shared and noisy:
figures are medians of repeated runs, and every target is a ratio measured side by side in one run.
"""


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def read_section(name: str) -> str:
    """The text of section NAME of BENCHMARKS.md as it stands ("" when there is none)."""
    start, end = _markers(name)
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    if start not in text or end not in text:
        return ""
    return text.split(start, 1)[1].split(end, 1)[0]


def write_section(name: str, body: str, stamped: bool = True) -> None:
    """Replace (or append) the section NAME of BENCHMARKS.md with ``body``, followed by when and
    where it was measured (``stamped=False``: the body as it is, for sections that say so
    themselves)."""
    start, end = _markers(name)
    if stamped:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        block = f"{start}\n{body.rstrip()}\n\n_Measured {stamp} on {machine()}._\n{end}"
    else:
        block = f"{start}\n{body}\n{end}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
