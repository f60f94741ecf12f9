"""The skeleton every Beam stage shares: clear the day's dead letters, build and run the job
timed, read its counters. The stage then turns the counters into its run summary and calls
``runs.complete`` (summary, then completion marker) once its output is in place.
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


class StageStopped(KeyboardInterrupt):
    """The stage's process was told to stop (SIGTERM) while its Beam job ran: like Ctrl-C, a
    request from outside, not an error of the stage (the CLI exits 143, 128 + SIGTERM)."""

    exit_code = 128 + signal.SIGTERM


@contextmanager
def _sigterm_raises(stage: str) -> Iterator[None]:
    """While inside, SIGTERM raises StageStopped in the main thread (Python's default would end
    the process at once, with no chance to cancel the job). Only the main thread can handle a
    signal: elsewhere (a stage run inside a test's thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise StageStopped(f"{stage} was stopped ({signal.Signals(signum).name})")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cancel(stage: str, result: Any) -> None:
    """Cancel the job behind ``result``, saying so on stderr in one line either way."""
    job = result.job_id() if getattr(result, "has_job", False) else None
    if job is None:  # a local runner: its job ends with this process
        return
    try:
        result.cancel()
    except Exception as e:  # the API unreachable, no permission: the operator must know
        print(
            f"[{stage}] stopped, but its Dataflow job {job} could not be cancelled "
            f"({type(e).__name__}: {e}); cancel it by hand",
            file=sys.stderr,
            flush=True,
        )
        return
    print(f"[{stage}] stopped: cancelled its Dataflow job {job}", file=sys.stderr, flush=True)


def run_and_wait(stage: str, p: beam.Pipeline) -> Any:
    """Run ``p`` and wait for its end; returns the PipelineResult.

    A stop on the way, SIGTERM (how Vertex AI and Kubernetes stop a container: a killed Airflow
    task cancels the stage's Vertex job) or Ctrl-C, first cancels the job: a Dataflow job
    outlives the process that submitted it, and would run and bill on with nobody to finish its
    day. A stop while the job is being submitted (seconds) cannot cancel it: its name says which.
    """
    result = None
    with _sigterm_raises(stage):
        try:
            result = p.run()
            result.wait_until_finish()
        except KeyboardInterrupt:  # StageStopped too
            if result is not None:
                _cancel(stage, result)
            raise
    return result


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
            result = run_and_wait(stage, p)
        except BaseException:
            if on_failure is not None:
                on_failure()
            raise
    return BeamRun(runs.counters(result), t["s"], result)
