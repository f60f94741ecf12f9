"""The skeleton every Beam stage shares: clear the day's dead letters, build and run the job
timed, read its counters. The stage then turns the counters into its run summary and calls
``runs.complete`` (summary, then completion marker) once its output is in place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from core import gcs, runs
from core.deadletter import clear_dead_letters


class TemplateLaunchError(RuntimeError):
    """The stage was started to describe a job for later (a Dataflow template): refused, since
    Beam then returns at once and the stage would finish the day before its job ran."""


def stage_options(stage: str, pipeline_args: list[str] | None) -> PipelineOptions:
    """The Beam options every job of ``stage`` runs with, checked before the stage touches the
    day. Raises TemplateLaunchError when they only describe a job (``--template_location``,
    which a Flex Template launch passes): ``wait_until_finish`` would return at once, with no
    job, and the stage would record and commit a day whose job has not run."""
    options = PipelineOptions(pipeline_args or [])
    if options.view_as(GoogleCloudOptions).template_location:
        raise TemplateLaunchError(
            f"{stage} cannot run as a Dataflow template (--template_location, as a Flex Template "
            "launch passes): its run summary, completion marker and output commit need the job's "
            "end, which a template launch never waits for; run the stage's own process instead "
            '(mode gcp: VSEARCH_GCP "beam_launch": "vertex_driver", docs/deploy.md)'
        )
    gcs.anonymous_beam_against_emulator()  # no credential search against a test server
    return options


@dataclass(frozen=True)
class BeamRun:
    counters: dict[str, int]  # committed counters of the vsearch namespace, by name
    wall_s: float
    result: Any  # the PipelineResult, for distributions and other metrics


def run_pipeline(
    stage: str,
    workdir: str,
    date: dt.date | str,
    build: Callable[[beam.Pipeline], None],
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    on_failure: Callable[[], None] | None = None,
) -> BeamRun:
    """Run one stage's job for one date; ``on_failure`` cleans up if the job raises."""
    options = stage_options(stage, pipeline_args) if test_pipeline is None else None
    clear_dead_letters(workdir, stage, date)  # idempotent: no stale dead letters mix in
    with runs.stopwatch() as t:
        p = test_pipeline or beam.Pipeline(options=options)
        build(p)
        try:
            result = p.run()
            result.wait_until_finish()
        except BaseException:
            if on_failure is not None:
                on_failure()
            raise
    return BeamRun(runs.counters(result), t["s"], result)
