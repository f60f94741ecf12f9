"""Dead letters in Beam: a DoFn's tagged dead-letter output and the JSONL shard writer.

The record, its folder and how to clear or read it are ``core.deadletter``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

import apache_beam as beam

from core import paths, storage
from core.deadletter import DeadLetter
from core.hashing import stable_hash
from core.runs import METRICS_NAMESPACE

DEAD_LETTER_TAG = "dead_letter"


def dead_letter(
    stage: str, error: str, listing_id: str | None = None, uri: str | None = None
) -> beam.pvalue.TaggedOutput:
    """A tagged output for a DoFn's dead-letter stream; also counts it in Beam metrics."""
    return tagged_dead_letter(DeadLetter(listing_id, uri, stage, error))


def tagged_dead_letter(record: DeadLetter) -> beam.pvalue.TaggedOutput:
    """``dead_letter`` for a record built elsewhere (e.g. ``snapshot.row_dead_letter``)."""
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "dead_lettered").inc()
    return beam.pvalue.TaggedOutput(
        DEAD_LETTER_TAG, dataclasses.replace(record, error=record.error[:2000])
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
        | "KeyByShard" >> beam.Map(lambda r: (stable_hash(r.to_json()) % num_shards, r))
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.ParDo(_WriteShard(directory, num_shards))
    )
