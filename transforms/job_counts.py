"""The job's counts as a file, written by the job itself as its last step.

A stage's run summary reports counts (images read, embedded, skipped, dead-lettered ...). Beam's
counters hold them too, but only the process that waited for the job can read those, and a Flex
Template launch does not wait. So the job also counts into PCollections and writes the totals as
one small JSON file (``pipelines/job_record.py`` says where and what is in it) after every one of
its sinks has written: the file's presence means the job's outputs are complete.

Counts come from two places, named as the Beam counters they match:

- ``CountAs(name)`` / ``SumAs(name, fn)``: the number (or a sum over) the elements of a
  PCollection, e.g. the dead letters, or the rows each written shard holds; several names take
  the one total each (the photos a run skipped are also images it looked at);
- ``tally(name, n)`` yielded by a DoFn that counts inside (rows parsed one at a time, objects
  listed): a tagged output (``COUNTS_TAG``) that also increments the Beam counter, so the two
  cannot differ. A step that declares its outputs must declare ``COUNTS_TAG`` to keep them; an
  undeclared tag is dropped, so transforms used by jobs that write no counts need not care.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam

from core import storage
from core.runs import METRICS_NAMESPACE

COUNTS_TAG = "counts"
Count = tuple[str, int]


def tally(name: str, n: int = 1) -> beam.pvalue.TaggedOutput:
    """``n`` more of ``name``: the Beam counter, and a (name, n) element on ``COUNTS_TAG``."""
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc(n)
    return beam.pvalue.TaggedOutput(COUNTS_TAG, (name, n))


Names = str | tuple[str, ...]


def _named(total: int, names: Names) -> list[Count]:
    return [(name, int(total)) for name in ((names,) if isinstance(names, str) else names)]


@beam.ptransform_fn
def CountAs(pcoll: beam.PCollection, names: Names) -> beam.PCollection:  # noqa: N802
    """(name, number of elements) for each of ``names``: 0 for an empty PCollection."""
    return (
        pcoll | "Count" >> beam.combiners.Count.Globally() | "Name" >> beam.FlatMap(_named, names)
    )


@beam.ptransform_fn
def SumAs(  # noqa: N802
    pcoll: beam.PCollection, names: Names, value: Callable[[Any], int]
) -> beam.PCollection:
    """(name, sum of ``value(element)``) for each of ``names``: 0 for an empty PCollection."""
    return (
        pcoll
        | "Values" >> beam.Map(value)
        | "Sum" >> beam.CombineGlobally(sum)
        | "Name" >> beam.FlatMap(_named, names)
    )


def _write(totals: dict[str, int], uri: str, header: dict[str, str], written: int) -> str:
    """The counts file, written once; ``written`` (how many elements the sinks output, a side
    input) only makes this step wait for them."""
    record = {
        **header,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "counts": dict(sorted(totals.items())),
    }
    storage.write_text(uri, json.dumps(record, indent=2) + "\n")
    return uri


@beam.ptransform_fn
def WriteJobCounts(  # noqa: N802
    counts: Iterable[beam.PCollection],
    uri: str,
    header: dict[str, str],
    after: Sequence[beam.PCollection],
) -> beam.PCollection:
    """Sum the (name, n) elements of ``counts`` by name and write them to ``uri`` (with
    ``header``, e.g. the stage and run id) once every PCollection in ``after`` is complete: the
    job's sinks, so a counts file exists only when the job's outputs are all written."""
    pipeline = next(iter(after)).pipeline
    # Known only once every sink's output is complete: as a side input, it holds the write back.
    written = (
        tuple(after)
        | "AllWritten" >> beam.Flatten(pipeline=pipeline)
        | "CountWritten" >> beam.combiners.Count.Globally()
    )
    return (
        tuple(counts)
        | "AllCounts" >> beam.Flatten(pipeline=pipeline)
        | "SumByName" >> beam.CombinePerKey(sum)
        | "ToDict" >> beam.combiners.ToDict()
        | "WriteCounts" >> beam.Map(_write, uri, header, beam.pvalue.AsSingleton(written))
    )
