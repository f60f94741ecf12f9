"""The stage registry: the daily stages, in order, and what each one hands to the next.

The CLI (``vsearch STAGE``), a backfill (``vsearch.stages.run_day``) and both modes of the
daily DAG (dags/) are built from this one table, so the order, the hand-offs and the embed
branch cannot differ between them. It imports nothing but the standard library: the DAG
processor imports it without the pipeline's packages (docs/deploy.md copies it beside the DAG
files), and ``vsearch --help`` must not load TensorFlow or Beam. A stage's modules are named as
``"module:attr"`` strings and load only when that stage runs.

Every stage is ``run(settings) -> Result`` (Beam stages also take Beam pipeline args): a frozen
settings dataclass in, a typed result out (``core.results`` reads a result back from the stage's
run summary). ``inputs`` say which settings field each stage takes from an earlier stage's
result: the gate measures train's ``version``, publish flips CURRENT to build-index's
``manifest_uri``, embed re-embeds everything (``full``) when the gate ``promoted``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Input:
    """Settings field ``field`` of a stage is ``result_field`` of stage ``stage``'s result."""

    field: str
    stage: str
    result_field: str
    # Without the earlier stage's result for the day (it did not run), the field keeps its
    # default instead of failing the stage: embed is incremental on a day with no gate run.
    optional: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    settings: str  # "module:Class": a light module, --help must not load TensorFlow or Beam
    run: str  # "module:function": run(settings[, pipeline_args]) -> result
    result: str  # "module:Class", a frozen dataclass (core.results reads it back)
    beam: bool  # a Beam job: takes Beam pipeline options
    record: str = ""  # name of its run summary and completion marker (default: name)
    inputs: tuple[Input, ...] = ()
    # "module:function": finish(workdir, date) -> result (embed's also takes model_version), the
    # day's work after the Beam job, from the files the job wrote (pipelines/job_record.py). A
    # stage that has one can be launched as a Flex Template, which only describes the job;
    # ``vsearch finish`` runs it.
    finish: str = ""

    @property
    def record_name(self) -> str:
        return self.record or self.name

    @property
    def task_id(self) -> str:
        """Its Airflow task id (ids are identifiers: build-index -> build_index)."""
        return self.name.replace("-", "_")


_COUNTS = "core.runs:Counts"
# Registry order = pipeline order.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "check-catalog",
            "Beam: validate a day's snapshot and read every image safely; dead-letter the bad ones",
            "pipelines.check_catalog:CheckCatalogSettings",
            "pipelines.check_catalog:run",
            _COUNTS,
            beam=True,
            record="catalog",
        ),
        Stage(
            "preprocess",
            "Beam + TF Transform: decode, normalise, build label vocabularies, split train/eval",
            "pipelines.preprocess:PreprocessSettings",
            "pipelines.preprocess:run",
            _COUNTS,
            beam=True,
            finish="pipelines.preprocess:finish",
        ),
        Stage(
            "train",
            "train the multitask embedding model and export a raw-bytes SavedModel",
            "models.config:TrainConfig",
            "pipelines.train:run",
            "pipelines.train:TrainResult",
            beam=False,
        ),
        Stage(
            "gate",
            "promote the candidate model (flip models/PUBLISHED) if it is good enough",
            "pipelines.gate:GateSettings",
            "pipelines.gate:run",
            "pipelines.gate:GateDecision",
            beam=False,
            inputs=(Input("candidate", "train", "version"),),
        ),
        Stage(
            "embed",
            "Beam ModelHandler: embed new or changed images, write Parquet (incremental by default)",
            "pipelines.embed:EmbedSettings",
            "pipelines.embed:run",
            "pipelines.embed:EmbedResult",
            beam=True,
            inputs=(Input("full", "gate", "promoted", optional=True),),
            finish="pipelines.embed:finish",
        ),
        Stage(
            "build-index",
            "Beam + faiss: train PCA + index once, add per shard, validate recall, write a manifest",
            "pipelines.build_index:BuildIndexSettings",
            "pipelines.build_index:run",  # build, then the no-match calibration
            "pipelines.build_index:BuildIndexResult",
            beam=True,
        ),
        Stage(
            "publish",
            "flip indexes/CURRENT to a validated manifest (compare-and-swap)",
            "pipelines.publish:PublishSettings",
            "pipelines.publish:run",
            "pipelines.publish:PublishResult",
            beam=False,
            inputs=(Input("manifest", "build-index", "manifest_uri"),),
        ),
    )
}

# The daily order (DESIGN.md). check-catalog is optional: preprocess and embed dead-letter bad
# inputs themselves, so the daily run does not pay for reading every image one more time.
DAILY_STAGES: tuple[str, ...] = ("preprocess", "train", "gate", "embed", "build-index", "publish")

# The stage the daily DAG runs as two tasks behind a branch on the gate's decision.
BRANCHED_STAGE = "embed"
# The daily DAG runs embed as one of two tasks: a full re-embed after the gate promoted a model
# (every embedding of the old model is stale), else the incremental one. Their Airflow ids:
EMBED_FULL_TASK = "embed_full"
EMBED_INCREMENTAL_TASK = "embed_incremental"


# The stages whose day a later step finishes after a Flex Template launch (``vsearch finish``).
FINISHED_LATER: tuple[str, ...] = tuple(n for n, s in STAGES.items() if s.finish)


def finish_task(stage: str) -> str:
    """The Airflow id of the task that finishes a stage's day after its Flex Template launch."""
    return f"finish_{STAGES[stage].task_id}"


def embed_task(promoted: bool) -> str:
    """The DAG's embed branch: the task id of the day's embed, given the gate's decision (a
    promoted model's first embed re-embeds everything: the old model's vectors are stale)."""
    return EMBED_FULL_TASK if promoted else EMBED_INCREMENTAL_TASK
