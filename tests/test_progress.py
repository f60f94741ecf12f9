"""A long stage reports how far it got, and how fast, while it runs."""

from __future__ import annotations

import re

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.progress import LogProgress


def test_progress_lines_count_up_with_a_rate_and_a_counter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = PipelineOptions(["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    p = beam.Pipeline(options=options)
    _ = p | beam.Create(range(25)) | "Progress" >> LogProgress("demo", "things", every_s=0.0)
    result = p.run()
    result.wait_until_finish()

    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[demo]")]
    counts = [int(re.match(r"\[demo\] ([\d,]+) things \(", line)[1]) for line in lines]  # type: ignore[index]
    assert counts == list(range(1, 26))  # every_s=0: a line per element, counting up
    assert all(re.search(r"\((\d[\d,]*\.\d/s|-)\)$", line) for line in lines), lines[:3]
    (counter,) = result.metrics().query(MetricsFilter().with_namespace("demo"))["counters"]
    assert counter.key.metric.name == "progress" and counter.committed == 25


def test_progress_is_throttled(capsys: pytest.CaptureFixture[str]) -> None:
    with beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"])) as p:
        _ = p | beam.Create(range(500)) | LogProgress("slow", "things", every_s=3600.0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[slow]")]
    assert lines == []  # the first line waits a whole period: a short stage stays silent
