"""Dead letters: every input a stage cannot use, with the reason, never silently dropped.

A record is ``{listing_id, uri, stage, error}`` (DESIGN.md) and lands as JSON Lines under
``WORKDIR/deadletter/STAGE/dt=D/part-NNNNN-of-NNNNN.jsonl``. Shard names are deterministic, and
the stage clears its day's folder before it runs (``clear_dead_letters``), so a re-run of a day
replaces that day's dead letters instead of adding to them.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import apache_beam as beam

from vsearch import paths, storage
from vsearch.runs import METRICS_NAMESPACE

DEAD_LETTER_TAG = "dead_letter"


@dataclass(frozen=True)
class DeadLetter:
    listing_id: str | None
    uri: str | None
    stage: str
    error: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def dead_letter(
    stage: str, error: str, listing_id: str | None = None, uri: str | None = None
) -> beam.pvalue.TaggedOutput:
    """A tagged output for a DoFn's dead-letter stream; also counts it in Beam metrics."""
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "dead_lettered").inc()
    return beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG, DeadLetter(listing_id, uri, stage, error[:2000])
    )


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, num_shards: int) -> None:
        self._directory = directory
        self._num_shards = num_shards

    def process(self, keyed: tuple[int, Iterable[DeadLetter]]) -> Iterable[str]:
        shard, records = keyed
        lines = sorted(r.to_json() for r in records)  # deterministic file content
        uri = storage.join(self._directory, paths.shard_name(shard, self._num_shards, ".jsonl"))
        storage.write_text(uri, "\n".join(lines) + "\n")
        yield uri


@beam.ptransform_fn
def WriteDeadLetters(  # noqa: N802 - Beam transforms are named like classes
    pcoll: beam.PCollection, workdir: str, stage: str, date: dt.date | str, num_shards: int = 4
) -> beam.PCollection:
    """Write DeadLetter records as JSONL shards; returns the PCollection of written URIs.

    Written with our storage layer rather than WriteToText so the files appear atomically
    under their final names on every filesystem.
    """
    directory = paths.deadletter_dir(workdir, stage, date)
    return (
        pcoll
        | "KeyByShard" >> beam.Map(lambda r: (zlib.crc32(r.to_json().encode()) % num_shards, r))
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.ParDo(_WriteShard(directory, num_shards))
    )


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
