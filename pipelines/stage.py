"""The skeleton every Beam stage shares: clear the day's dead letters, build and run the job
timed, read its counters. The stage then turns the counters into its run summary and calls
``runs.complete`` (summary, then completion marker) once its output is in place.

A stage whose day can be finished by a later process (preprocess, embed: ``finishes_later``;
``pipelines/job_record.py``) may be launched with ``--template_location``, as a Flex Template
launch does: the job is then only described (``BeamRun.described``) and the stage leaves the day
to its finish step. The others refuse it.
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
    """The stage was started to describe a job for later (a Dataflow template) but cannot leave
    its day to a later step: refused, since Beam then returns at once and the stage would finish
    the day before its job ran."""


def describes_only(options: PipelineOptions) -> bool:
    """The options only describe a job (``--template_location``, which a Flex Template launch
    passes): ``run`` writes the job's description, and ``wait_until_finish`` returns at once
    (Beam 2.77: a result without a job is terminal, DONE), whatever became of the job."""
    return bool(options.view_as(GoogleCloudOptions).template_location)


def stage_options(
    stage: str, pipeline_args: list[str] | None, finishes_later: bool = False
) -> PipelineOptions:
    """The Beam options every job of ``stage`` runs with, checked before the stage touches the
    day. Raises TemplateLaunchError when they only describe a job and the stage cannot leave
    its day to a finish step (``finishes_later``): it would record a day whose job has not run."""
    options = PipelineOptions(pipeline_args or [])
    if describes_only(options) and not finishes_later:
        raise TemplateLaunchError(
            f"{stage} cannot run as a Dataflow template (--template_location, as a Flex Template "
            "launch passes): its run summary and completion marker need the job's end, which a "
            "template launch never waits for; run the stage's own process instead (only "
            "preprocess and embed launch as templates, finished by `vsearch finish`; "
            "docs/deploy.md)"
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
    # Only described for a template launch: the job runs later, its day finished by a later
    # process (counters and metrics are then empty).
    described: bool = False


def run_pipeline(
    stage: str,
    workdir: str,
    date: dt.date | str,
    build: Callable[[beam.Pipeline], None],
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    on_failure: Callable[[], None] | None = None,
    finishes_later: bool = False,
) -> BeamRun:
    """Run one stage's job for one date; ``on_failure`` cleans up if the job raises.
    ``finishes_later``: the stage can leave its day to a finish step, so a template launch
    (``describes_only``) is accepted and returns ``described``."""
    options = stage_options(stage, pipeline_args, finishes_later) if test_pipeline is None else None
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
    if describes_only(p.options):
        return BeamRun({}, t["s"], result, described=True)
    return BeamRun(runs.counters(result), t["s"], result)
