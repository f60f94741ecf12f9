"""A launched Beam job's record: what the stage's finish step reads once the job has ended.

preprocess and embed each run in two steps: run the job, then finish the day (run summary,
completion marker and, for embed, the partition commit). A normal run does both in one process.
A Flex Template launch (``--template_location``) only describes the job and exits, and the day is
finished later by ``vsearch finish STAGE``, in another process, on another machine. Both ways
read the same two files in the run's own folder, ``WORKDIR/staging/STAGE/dt=D/RUN_ID/`` or, as
each embed run is for one model version, ``WORKDIR/staging/embed/model=VERSION/dt=D/RUN_ID/``:

- ``job.json``, written by the stage before its job runs: the run id, when it was launched, the
  workdir and the launch's ``facts`` (the settings and plan the summary reports).
- ``counts.json``, written by the job itself as its last step, once every output is in place
  (``transforms/job_counts.py``): the day's counts. Without it the job failed, was cancelled or
  is still running, and finishing refuses.

A launch deletes the stage's earlier run folders of the day (for embed: of the day and model
version), so there is one to finish; the finish step deletes it when the day is finished. Runs
for two model versions never touch each other's folder: a candidate's launch
(``vsearch embed --model V``) leaves production's job of the same day running and finishable.
Nothing here imports Beam.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from core import paths, results, runs, storage

_R = TypeVar("_R")

JOB_FILE = "job.json"
COUNTS_FILE = "counts.json"


class JobNotFinished(RuntimeError):
    """The job's outputs are not all there: finishing the day is refused, nothing is written."""


@dataclass(frozen=True)
class JobRecord:
    """One launched job: ``job.json``, and where its counts go."""

    stage: str
    date: str
    workdir: str
    run_id: str
    root: str  # the run's folder
    launched_at: str  # ISO 8601, UTC
    facts: Mapping[str, Any]  # what the stage put in at launch for its summary
    model_version: str | None = None  # embed: the model the job runs (its runs' own folder)

    @property
    def counts_uri(self) -> str:
        return storage.join(self.root, COUNTS_FILE)

    def header(self) -> dict[str, str]:
        """What the counts file repeats, so a file of another run is never taken for this one."""
        return {"stage": self.stage, "date": self.date, "run_id": self.run_id}


@dataclass(frozen=True)
class JobCounts:
    counts: Mapping[str, int]
    written_at: str

    def get(self, name: str) -> int:
        return int(self.counts.get(name, 0))


@dataclass(frozen=True)
class Launched:
    """What a stage returns when it only described its job (a Flex Template launch): the day is
    finished by ``vsearch finish`` once the job has run."""

    stage: str
    date: str
    workdir: str
    run_id: str
    model_version: str | None = None  # embed: the finish step names it

    def one_line(self) -> str:
        model = f" --model {self.model_version}" if self.model_version else ""
        return (
            f"[{self.stage} dt={self.date}] job described for a template launch (run "
            f"{self.run_id}); the day is finished by the finish step once the job has run: "
            f"vsearch finish {self.stage} --workdir {self.workdir} --date {self.date}{model}"
        )


def new_run(
    workdir: str, stage: str, date: dt.date | str, model_version: str | None = None
) -> tuple[str, str]:
    """(run id, run folder) for a new run; the earlier run folders of the same stage, day and
    model version (a crashed or unfinished run's) are deleted, never another model's."""
    run_id = uuid.uuid4().hex[:12]
    storage.delete_prefix(paths.staging_runs(workdir, stage, date, model_version))
    return run_id, paths.staging_dir(workdir, stage, date, run_id, model_version)


def launch(
    workdir: str,
    stage: str,
    date: dt.date | str,
    run_id: str,
    facts: Mapping[str, Any],
    model_version: str | None = None,
) -> JobRecord:
    """Write ``job.json`` into the run's folder (``new_run``'s, same model version); call it
    before the job runs."""
    record = JobRecord(
        stage,
        str(date),
        workdir,
        run_id,
        paths.staging_dir(workdir, stage, date, run_id, model_version),
        dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        dict(facts),
        model_version,
    )
    doc = {k: v for k, v in vars(record).items() if k != "root"}
    storage.write_text(storage.join(record.root, JOB_FILE), json.dumps(doc, indent=2) + "\n")
    return record


def launched(
    workdir: str, stage: str, date: dt.date | str, model_version: str | None = None
) -> list[JobRecord]:
    """The records of the stage's launched, unfinished jobs of the day and model version (one,
    or none)."""
    return _records(_job_files(workdir, stage, date, model_version))


def launched_any_model(workdir: str, stage: str, date: dt.date | str) -> list[JobRecord]:
    """The records of the stage's launched, unfinished jobs of the day, whatever their model."""
    return _records(_job_files(workdir, stage, date, "*"))  # model=*: every model's folder


def _job_files(workdir: str, stage: str, date: dt.date | str, model_version: str | None) -> str:
    return storage.join(paths.staging_runs(workdir, stage, date, model_version), "*", JOB_FILE)


def _records(pattern: str) -> list[JobRecord]:
    found = []
    for uri in sorted(storage.glob(pattern)):
        doc = json.loads(storage.read_text(uri))
        found.append(JobRecord(**{**doc, "root": storage.parent(uri)}))
    return found


def find(
    workdir: str, stage: str, date: dt.date | str, model_version: str | None = None
) -> JobRecord:
    """The one launched, unfinished job of the stage, day and model version; raises
    JobNotFinished naming what is missing (no launch, or several) and, when none was launched
    for that model, the models that were."""
    found = launched(workdir, stage, date, model_version)
    if len(found) == 1:
        return found[0]
    where = _job_files(workdir, stage, date, model_version)
    if found:
        runs_ = ", ".join(r.run_id for r in found)
        raise JobNotFinished(
            f"several launched {stage} jobs for {date} ({runs_}, {where}); relaunch the stage"
        )
    of_model = f" with model {model_version}" if model_version else ""
    hint = " (launch the stage first)"
    others = sorted({str(r.model_version) for r in launched_any_model(workdir, stage, date)})
    if others:  # e.g. only a candidate's job was launched, and no --model named it
        flags = " or ".join(f"--model {v}" for v in others)
        hint = (
            f"; launched for {date} with another model: {', '.join(others)} "
            f"(finish one with {flags})"
        )
    raise JobNotFinished(f"no launched {stage} job for {date}{of_model}: {where} is missing{hint}")


def read_counts(record: JobRecord) -> JobCounts:
    """The job's counts; raises JobNotFinished when the job has not written them (it failed, was
    cancelled, or still runs) or they are another run's."""
    uri = record.counts_uri
    if not storage.exists(uri):
        raise JobNotFinished(
            f"the {record.stage} job of {record.date} (run {record.run_id}) has not finished: "
            f"{uri} is missing (the job failed, was cancelled or is still running); "
            "nothing of the day was written"
        )
    doc = json.loads(storage.read_text(uri))
    if {k: doc.get(k) for k in record.header()} != record.header():
        raise JobNotFinished(f"{uri} is not the counts of run {record.run_id}: {doc}")
    return JobCounts({str(k): int(v) for k, v in doc["counts"].items()}, str(doc["written_at"]))


def wall_s(record: JobRecord, counts: JobCounts) -> float:
    """From the launch to the counts' write: the job's time, seen from another process."""
    start = dt.datetime.fromisoformat(record.launched_at)
    return max(0.0, (dt.datetime.fromisoformat(counts.written_at) - start).total_seconds())


def close(record: JobRecord) -> None:
    """The day is finished: the run's folder goes."""
    storage.delete_prefix(record.root)


def already_finished(
    workdir: str, stage: str, date: dt.date | str, model_version: str | None = None
) -> bool:
    """The day's job (of that model version) was finished before: its record deleted, its
    marker written, production's or the candidate's (``runs.candidate_for``). Finishing again
    has nothing to do."""
    candidate = runs.candidate_for(workdir, model_version)
    return not launched(workdir, stage, date, model_version) and runs.is_done(
        workdir, stage, date, candidate
    )


def finished_before(
    workdir: str,
    stage: str,
    date: dt.date | str,
    result: type[_R],
    model_version: str | None = None,
) -> _R:
    """The result of a day finished before, read back from its run summary (``already_finished``),
    saying so in one line."""
    candidate = runs.candidate_for(workdir, model_version)
    summary = runs.read_summary(workdir, stage, date, candidate)
    uri = paths.run_summary(workdir, stage, date, candidate)
    print(f"[{stage} dt={date}] already finished: {uri}")
    return results.from_summary(result, summary)  # type: ignore[no-any-return]
