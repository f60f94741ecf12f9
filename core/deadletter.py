"""Dead letters: every input a stage cannot use, with the reason, never silently dropped.

A record is ``{listing_id, uri, stage, error}`` (DESIGN.md) and lands as JSON Lines under
``WORKDIR/deadletter/STAGE/dt=D/part-NNNNN-of-NNNNN.jsonl``. Shard names are deterministic, and
the stage clears its day's folder before it runs (``clear_dead_letters``), so a re-run of a day
replaces that day's dead letters instead of adding to them. The Beam side (tagged outputs and the
writer) is ``transforms.dead_letter_output``; the record and the folder live here, below every stage.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

from core import paths, storage


@dataclass(frozen=True)
class DeadLetter:
    listing_id: str | None
    uri: str | None
    stage: str
    error: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def clear_dead_letters(workdir: str, stage: str, date: dt.date | str) -> None:
    """Remove a day's dead letters of a stage before re-running it (idempotent re-runs)."""
    storage.delete_prefix(paths.deadletter_dir(workdir, stage, date))


def read_dead_letters(workdir: str, stage: str, date: dt.date | str) -> list[dict[str, Any]]:
    """All dead-letter records of a stage and day (for summaries, tests and the demo)."""
    out: list[dict[str, Any]] = []
    for uri in storage.list_prefix(paths.deadletter_dir(workdir, stage, date)):
        if uri.endswith(".jsonl"):
            out.extend(json.loads(line) for line in storage.read_text(uri).splitlines() if line)
    return out
