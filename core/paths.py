"""The one place that knows the path layout of docs/DESIGN.md.

Every stage asks this module where to read and write; no other module builds a WORKDIR or
CATALOG path by hand. All functions take and return URIs (local, ``file://`` or ``gs://``).
"""

from __future__ import annotations

import datetime as dt

from core import storage


def parse_date(value: str) -> dt.date:
    """``YYYY-MM-DD`` -> date, with an error that says what was expected."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        # The same words for every date flag of every command (the CLI names the flag).
        raise ValueError(f"expected a date YYYY-MM-DD, got {value!r}") from None


def _d(date: dt.date | str) -> str:
    return date if isinstance(date, str) else date.isoformat()


# ------------------------------------------------------------------ catalog (input)


def catalog_day(catalog: str, date: dt.date | str) -> str:
    return storage.join(catalog, f"dt={_d(date)}")


def catalog_table(catalog: str, date: dt.date | str, table: str) -> list[str]:
    """Candidate files for a table ("listings" or "reviews"), Parquet first."""
    day = catalog_day(catalog, date)
    return [storage.join(day, f"{table}.parquet"), storage.join(day, f"{table}.jsonl")]


# ------------------------------------------------------------------ workdir (outputs)


def transformed_dir(workdir: str, date: dt.date | str) -> str:
    """TFT's output: the TFRecords, ``transform_fn/`` and ``transformed_metadata/``."""
    return storage.join(workdir, "transformed", f"dt={_d(date)}")


def models_root(workdir: str) -> str:
    return storage.join(workdir, "models")


def model_dir(workdir: str, version: str) -> str:
    return storage.join(workdir, "models", version)


def embedder_dir(workdir: str, version: str) -> str:
    return storage.join(model_dir(workdir, version), "embedder")


def train_logs_dir(workdir: str, version: str) -> str:
    """TensorBoard event files of a training run (``tensorboard --logdir`` this, gs:// too)."""
    return storage.join(model_dir(workdir, version), "logs")


def train_backup_dir(workdir: str, version: str) -> str:
    """The last finished epoch's weights and optimizer state; a retry resumes from here.

    Removed by Keras when training ends; a version's settings and data are in its name, so a
    retry with the same settings on the same data finds its own backup.
    """
    return storage.join(model_dir(workdir, version), "backup")


def published_model_pointer(workdir: str) -> str:
    return storage.join(workdir, "models", "PUBLISHED")


def embeddings_root(workdir: str, model_version: str) -> str:
    return storage.join(workdir, "embeddings", f"model={model_version}")


def embeddings_dir(workdir: str, model_version: str, date: dt.date | str) -> str:
    return storage.join(embeddings_root(workdir, model_version), f"dt={_d(date)}")


def embed_state_root(workdir: str, model_version: str) -> str:
    """The embed job's own memory (object metadata key -> sha256), not part of any contract."""
    return storage.join(workdir, "embed_state", f"model={model_version}")


def embed_state_dir(workdir: str, model_version: str, date: dt.date | str) -> str:
    return storage.join(embed_state_root(workdir, model_version), f"dt={_d(date)}")


def staging_runs(
    workdir: str, stage: str, date: dt.date | str, model_version: str | None = None
) -> str:
    """The run folders of a stage and day: ``staging/STAGE/dt=D/``, or for a run of one model
    (embed) ``staging/STAGE/model=VERSION/dt=D/``, a folder no other model's runs are in, so a
    run clearing its own day never touches another model's (the model first, as in
    ``embeddings/``)."""
    if model_version is None:
        return storage.join(workdir, "staging", stage, f"dt={_d(date)}")
    return storage.join(workdir, "staging", stage, _model(model_version), f"dt={_d(date)}")


def staging_dir(
    workdir: str, stage: str, date: dt.date | str, run_id: str, model_version: str | None = None
) -> str:
    """Where a run writes output it publishes only after its checks pass (removed afterwards)."""
    return storage.join(staging_runs(workdir, stage, date, model_version), run_id)


def _model(version: str) -> str:
    """``model=VERSION``, a path segment of one model's files."""
    if not version or "/" in version:
        raise ValueError(f"not a model version: {version!r}")
    return f"model={version}"


def index_build_dir(workdir: str, model_version: str, build_id: str) -> str:
    return storage.join(workdir, "indexes", model_version, build_id)


def current_index_pointer(workdir: str) -> str:
    return storage.join(workdir, "indexes", "CURRENT")


def deadletter_dir(workdir: str, stage: str, date: dt.date | str) -> str:
    return storage.join(workdir, "deadletter", stage, f"dt={_d(date)}")


def runs_root(workdir: str) -> str:
    return storage.join(workdir, "runs")


def _runs_day(workdir: str, date: dt.date | str, candidate: str | None) -> str:
    """Production's runs: ``runs/dt=D/``; a candidate model's: ``runs/model=VERSION/dt=D/``."""
    if candidate is None:
        return storage.join(runs_root(workdir), f"dt={_d(date)}")
    return storage.join(runs_root(workdir), _model(candidate), f"dt={_d(date)}")


def run_summary(workdir: str, stage: str, date: dt.date | str, candidate: str | None = None) -> str:
    """The run summary of a stage and day: production's, or that of a run for ``candidate``, a
    model version other than the published one (``core.runs`` decides which)."""
    return storage.join(_runs_day(workdir, date, candidate), f"{stage}.json")


def completion_marker(
    workdir: str, stage: str, date: dt.date | str, candidate: str | None = None
) -> str:
    """Written last by a stage itself when it finished for a date (``runs.complete``)."""
    return storage.join(_runs_day(workdir, date, candidate), f"{stage}.done")


def shard_name(index: int, total: int, suffix: str) -> str:
    """``part-00003-of-00016.parquet``: zero padded so names sort in shard order."""
    return f"part-{index:05d}-of-{total:05d}{suffix}"


# ------------------------------------------------------------------ human evaluation


def eval_root(workdir: str) -> str:
    return storage.join(workdir, "eval")


def eval_task(workdir: str, task_id: str) -> str:
    """``WORKDIR/eval/TASK_ID/task.json``: the rating task (queries and their result lists)."""
    return storage.join(eval_root(workdir), task_id, "task.json")


def eval_task_reports(workdir: str) -> str:
    """Glob of every task's report, for the gate (``WORKDIR/eval/*/report.json``)."""
    return storage.join(eval_root(workdir), "*", "report.json")


def eval_ratings_dir(task_uri: str) -> str:
    """``.../TASK_ID/ratings/``: one small JSON file per (rater, query, result), beside the task."""
    return storage.join(storage.parent(task_uri), "ratings")


def eval_report(task_uri: str, suffix: str = ".json") -> str:
    """``.../TASK_ID/report.json`` (or ``report.html``), beside the task."""
    return storage.join(storage.parent(task_uri), f"report{suffix}")
