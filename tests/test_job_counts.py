"""The job's counts file (``transforms/job_counts.py``): counts summed by name, zero for an empty
PCollection, a DoFn's tallies kept where declared, and no file at all when a sink fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.pipeline_graph import upstream
from transforms.job_counts import COUNTS_TAG, CountAs, SumAs, WriteJobCounts, tally

OPTIONS = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
HEADER = {"stage": "s", "date": "2026-01-01", "run_id": "r1"}


def _evens(n: int) -> Iterator[Any]:
    if n % 2:
        yield tally("odd")
    else:
        yield n


def test_counts_are_summed_by_name_and_written_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "counts.json")
    with beam.Pipeline(options=OPTIONS) as p:
        numbers = p | "Numbers" >> beam.Create(range(7))
        split = numbers | "Evens" >> beam.FlatMap(_evens).with_outputs(COUNTS_TAG, main="evens")
        written = split.evens | "Sink" >> beam.Map(lambda n: n)
        none = p | "Nothing" >> beam.Create([])
        _ = (
            split[COUNTS_TAG],
            numbers | "All" >> CountAs("numbers"),
            numbers | "AllAgain" >> CountAs("numbers"),  # the same name twice: added up
            split.evens | "SumEvens" >> SumAs("even_sum", lambda n: n),
            none | "NoneCounted" >> CountAs("none"),
        ) | WriteJobCounts(uri, HEADER, after=[written])
    doc = json.loads(Path(uri).read_text())
    assert {k: doc[k] for k in HEADER} == HEADER and doc["written_at"]
    assert doc["counts"] == {"numbers": 14, "odd": 3, "even_sum": 12, "none": 0}


class _FailingSink(beam.DoFn):
    def process(self, n: int) -> Iterator[int]:
        if n == 3:
            raise OSError("the sink could not write")
        yield n


def test_the_write_waits_for_every_sink(tmp_path: Path) -> None:
    """In the graph: the counts' write depends on each PCollection given as ``after`` (the
    DirectRunner runs steps in the order they were built, so only the graph shows it)."""
    p = beam.Pipeline(options=OPTIONS)
    numbers = p | "Numbers" >> beam.Create(range(3))
    sinks = [numbers | f"Sink{i}" >> beam.Map(lambda n: n) for i in range(2)]
    _ = (numbers | CountAs("numbers"),) | WriteJobCounts(str(tmp_path / "c"), HEADER, after=sinks)
    assert {"Sink0", "Sink1"} <= upstream(p, "WriteCounts")


def test_no_counts_file_when_a_sink_fails(tmp_path: Path) -> None:
    """The counts file waits for every sink given as ``after``: a job that fails in one leaves
    no counts, so its day is never finished."""
    uri = tmp_path / "counts.json"
    with pytest.raises(Exception, match="the sink could not write"):
        with beam.Pipeline(options=OPTIONS) as p:
            numbers = p | beam.Create(range(5))
            counted = numbers | "Count" >> CountAs("numbers")
            # The sink after a few shuffles: without the wait, the counts would be written first.
            later = numbers
            for i in range(3):
                later = later | f"Shuffle{i}" >> beam.Reshuffle()
            written = later | beam.ParDo(_FailingSink())
            _ = (counted,) | WriteJobCounts(str(uri), HEADER, after=[written])
    assert not uri.exists()
