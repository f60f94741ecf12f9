"""The embed stage's commit: the job writes into a staging folder (its run folder,
``pipelines/job_record.py``), and the day's partition is replaced by those files as a whole
(core/partitions.py: a manifest, and an atomic directory swap locally), then the day's state
snapshot likewise. A run that must not publish (too many dead letters) or crashed leaves the
partition as it was, and its staged files are deleted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

import pyarrow.parquet as pq

from core import partitions, paths, storage
from pipelines import job_record


class Staging(NamedTuple):
    """One run's staging folder; nothing in it is read until it is committed."""

    attempt: str  # this run's id, the commit id of what it publishes
    root: str
    rows: str  # the embedding Parquet files
    state: str  # the state snapshot's files


def new_staging(workdir: str, stage: str, date: dt.date, model_version: str) -> Staging:
    """A fresh staging folder for this run, its run folder (``job_record.new_run``: what crashed
    or unfinished runs of the day and model version left behind is deleted; another model's
    runs are left alone)."""
    return staging_at(*job_record.new_run(workdir, stage, date, model_version))


def staging_at(attempt: str, root: str) -> Staging:
    """The staging folder of run ``attempt`` in its run folder ``root``."""
    return Staging(attempt, root, storage.join(root, "rows"), storage.join(root, "state"))


def discard(staging: Staging) -> None:
    storage.delete_prefix(staging.root)


def commit_day(
    staging: Staging, workdir: str, version: str, date: dt.date, basis: dict[str, str]
) -> None:
    """Publish the staged rows as the day's partition, then the staged state snapshot with its
    ``basis`` (the partitions it was checked on: ``basis`` plus today's, when today has files).
    Idempotent: a partition this run already committed (its manifest names this attempt) is
    left as it is, so a finish step run again after a crash completes the commit."""
    rows = paths.embeddings_dir(workdir, version, date)
    published = _committed_files(rows, staging.attempt)
    if published is None:
        published = publish_partition(staging.rows, rows, staging.attempt)
    # Today's state holds only photos with a row in these partitions (a day without files is
    # not listed as a partition, so it is not named either).
    basis = {**basis, **({date.isoformat(): staging.attempt} if published else {})}
    state = paths.embed_state_dir(workdir, version, date)
    if _committed_files(state, staging.attempt) is None:
        publish_partition(staging.state, state, staging.attempt, extra={"basis": basis})


def _committed_files(partition: str, attempt: str) -> int | None:
    """How many files ``partition`` holds if ``attempt`` committed it, else None."""
    manifest = partitions.read_manifest(partition)
    if manifest is None or str(manifest["attempt"]) != attempt:
        return None
    return len(manifest["files"])


def publish_partition(
    staged: str, partition: str, attempt: str, extra: dict[str, Any] | None = None
) -> int:
    """Commit the staged files as the whole partition (core/partitions.py); returns how
    many files it now holds."""
    uris = [u for u in storage.list_prefix(staged) if u.endswith(".parquet")]
    rows = storage.map_io(_num_rows, uris, remote=storage.is_gcs(staged))
    files = list(zip(uris, rows, strict=True))
    partitions.publish(staged, partition, attempt, files, extra=extra)
    return len(files)


def _num_rows(uri: str) -> int:
    """A Parquet file's row count, from its footer."""
    with storage.open_read(uri) as f:
        return int(pq.ParquetFile(f).metadata.num_rows)
