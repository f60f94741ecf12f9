"""The Google Cloud launch settings of the daily DAG (mode "gcp"): one frozen dataclass, and the
launch requests built from it. Nothing here calls Google Cloud; the DAG hands these requests to
the Google provider's operators, and tests/test_dag_gcp.py checks them.

The settings are a deployment's, read once when the DAG file is parsed: ``VSEARCH_MODE=gcp`` and
``VSEARCH_GCP`` (a JSON object of the fields below) in the Composer environment's variables
(docs/deploy.md, "Cloud Composer"). They are parse-time on purpose: the two modes launch stages
with different operators (Beam provider subprocesses locally, Dataflow Flex Templates and Vertex
AI jobs on Google Cloud), and Airflow fixes a task's operator when it parses the file. What a run
processes (date, catalog, workdir, stage flags) stays in the DAG's params.

What runs where in gcp mode:
- preprocess, embed: by default (``beam_launch`` "flex_template") Dataflow Flex Template
  launches of the image (the template's ``stage`` parameter names the stage;
  deploy/flex_launch.py), each followed by a light Vertex job that finishes the day from what
  the job wrote (``vsearch finish STAGE``: run summary, completion marker, embed's commit). With
  "vertex_driver", as build-index below: the stage's own process in a Vertex job, its Beam job
  on Dataflow, finishing the day itself.
- train (GPU), gate, build-index, publish: Vertex AI custom jobs from the same image, each one
  ``vsearch backfill --stages STAGE`` for the run's day (it reads the earlier stages' results
  from their run summaries, and skips a stage already done for the day). build-index runs three
  Beam jobs and trains the index in its own process between them, so its driver runs there, with
  its Beam jobs on Dataflow (``--runner DataflowRunner``, the image as SDK container).
- Airflow itself only waits (deferrable sensor and triggers) and reads two small JSON files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MODES = ("local", "gcp")


def mode() -> str:
    """The deployment's mode: ``VSEARCH_MODE`` ("local", the default, or "gcp")."""
    value = os.environ.get("VSEARCH_MODE", "local")
    if value not in MODES:
        raise ValueError(f"VSEARCH_MODE must be one of {MODES}, not {value!r}")
    return value


BEAM_LAUNCHES = ("flex_template", "vertex_driver")
REQUIRED = ("project", "image", "temp_location", "service_account")


@dataclass(frozen=True)
class GcpSettings:
    """Where and how the stages run on Google Cloud. Only ``project``, ``image``,
    ``temp_location``, ``service_account`` and (with ``beam_launch`` "flex_template", the
    default) ``template_path`` have no usable default."""

    project: str
    image: str  # the CPU variant, REGION-docker.pkg.dev/PROJECT/REPO/vsearch:TAG (docs/deploy.md)
    # The Flex Template spec built from `image`, gs://B/templates/vsearch-TAG.json (needed by
    # beam_launch "flex_template", the default; "" with "vertex_driver").
    template_path: str
    temp_location: str  # gs://B/tmp: Dataflow staging and temp files
    # Runs every Dataflow worker and Vertex job (roles: docs/deploy.md); never the default
    # Compute Engine account, which holds Editor on the whole project.
    service_account: str
    region: str = "us-central1"
    # The GPU variant, for embed's workers and training ("" = the CPU image: a CPU-only setup).
    gpu_image: str = ""
    gcp_conn_id: str = "google_cloud_default"
    # Dataflow workers of preprocess and build-index: TF Transform and faiss adds are CPU work.
    dataflow_machine_type: str = "n1-standard-4"
    dataflow_max_workers: int = 20
    # embed's workers: the model on a T4 each. "" = CPU workers on dataflow_machine_type.
    embed_machine_type: str = "n1-standard-8"
    embed_accelerator: str = "type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    embed_max_workers: int = 10
    # train: one GPU machine (Keras, one process).
    train_machine_type: str = "n1-standard-8"
    train_accelerator_type: str = "NVIDIA_TESLA_T4"  # "" = CPU training
    train_accelerator_count: int = 1
    # gate, publish and build-index's driver: small CPU machines (the gate loads TensorFlow to
    # measure models; build-index trains its quantizer on a sample in its driver).
    light_machine_type: str = "n1-standard-4"
    driver_machine_type: str = "n1-highmem-8"
    # On every job (Dataflow and Vertex), for cost reports; values: lowercase, digits, - and _.
    labels: Mapping[str, str] = field(default_factory=lambda: {"app": "visual-search"})
    # Optional: "PROJECT.DATASET.TABLE", a native date-partitioned table that each day's
    # committed embeddings are loaded into ("" = no load task).
    bigquery_table: str = ""
    subnetwork: str = ""  # regions/R/subnetworks/S, when workers must use a given network
    # How preprocess and embed start: "flex_template" (Airflow launches the Dataflow job from
    # the template, waits for it in the triggerer and cancels it on a kill; then a light Vertex
    # job, `vsearch finish STAGE`, finishes the day from the job's files) or "vertex_driver" (the
    # stage's own process runs in a Vertex job, starts its Dataflow job, waits for it and
    # finishes the day, as build-index always does).
    beam_launch: str = "flex_template"

    def __post_init__(self) -> None:
        missing = [name for name in REQUIRED if not getattr(self, name)]
        if missing:
            raise ValueError(f"VSEARCH_GCP needs {', '.join(missing)}")
        if self.beam_launch not in BEAM_LAUNCHES:
            raise ValueError(f"VSEARCH_GCP beam_launch must be one of {BEAM_LAUNCHES}")
        if self.beam_launch == "flex_template" and not self.template_path:
            raise ValueError('VSEARCH_GCP beam_launch "flex_template" needs template_path')
        for name in ("template_path", "temp_location"):
            value = str(getattr(self, name))
            if value and not value.startswith("gs://"):
                raise ValueError(f"VSEARCH_GCP {name} must be a gs:// URI")

    @classmethod
    def from_json(cls, text: str) -> GcpSettings:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"VSEARCH_GCP has unknown settings {unknown}; known: {sorted(known)}")
        blank = {name: "" for name in (*REQUIRED, "template_path")}  # a missing one: named
        return cls(**(blank | values))

    @classmethod
    def from_env(cls) -> GcpSettings:
        text = os.environ.get("VSEARCH_GCP")
        if not text:
            raise ValueError("VSEARCH_MODE=gcp needs VSEARCH_GCP (a JSON object; docs/deploy.md)")
        return cls.from_json(text)

    @property
    def worker_gpu_image(self) -> str:
        return self.gpu_image or self.image


# ------------------------------------------------------------------ Dataflow Flex Templates


def job_name(task_id: str, date: str) -> str:
    """vsearch-embed-full-20260102 (the operator appends a random suffix per attempt)."""
    return f"vsearch-{task_id.replace('_', '-')}-{date.replace('-', '')}"


def flex_template_body(
    s: GcpSettings, task_id: str, stage: str, date: str, flags: Mapping[str, str]
) -> dict[str, Any]:
    """The flexTemplates.launch request body of one Beam stage on one day.

    ``parameters`` reach deploy/flex_launch.py as ``--name=value``: ``stage`` names the command,
    the rest are its flags and Beam's options (the workers' image; embed's accelerator as a
    Dataflow service option). Worker resources go in ``environment``.
    """
    embed = stage == "embed"
    gpu = embed and bool(s.embed_accelerator)
    parameters = {"stage": stage, **flags}
    if gpu:
        parameters["dataflow_service_options"] = f"worker_accelerator={s.embed_accelerator}"
    environment: dict[str, Any] = {
        "serviceAccountEmail": s.service_account,
        "tempLocation": s.temp_location,
        "stagingLocation": s.temp_location.rstrip("/") + "/staging",
        "sdkContainerImage": s.worker_gpu_image if gpu else s.image,
        "machineType": s.embed_machine_type if gpu else s.dataflow_machine_type,
        "maxWorkers": s.embed_max_workers if embed else s.dataflow_max_workers,
        "additionalExperiments": ["use_runner_v2"],
        "additionalUserLabels": dict(s.labels) | {"stage": stage},
    }
    if s.subnetwork:
        environment["subnetwork"] = s.subnetwork
    return {
        "launchParameter": {
            "jobName": job_name(task_id, date),
            "containerSpecGcsPath": s.template_path,
            "parameters": parameters,
            "environment": environment,
        }
    }


# ------------------------------------------------------------------ Vertex AI custom jobs


def dataflow_args(s: GcpSettings, task_id: str, date: str) -> list[str]:
    """Beam options of a stage whose driver runs in a Vertex job and whose jobs run on Dataflow
    (embed's: the GPU image, machine and accelerator of its workers)."""
    labels = dict(s.labels) | {"stage": task_id.replace("_", "-")}
    embed = task_id.startswith("embed")
    gpu = embed and bool(s.embed_accelerator)
    args = [
        "--runner=DataflowRunner",
        f"--project={s.project}",
        f"--region={s.region}",
        f"--temp_location={s.temp_location}",
        f"--service_account_email={s.service_account}",
        f"--sdk_container_image={s.worker_gpu_image if gpu else s.image}",
        "--sdk_location=container",
        f"--machine_type={s.embed_machine_type if gpu else s.dataflow_machine_type}",
        f"--max_num_workers={s.embed_max_workers if embed else s.dataflow_max_workers}",
        "--experiments=use_runner_v2",
        f"--job_name={job_name(task_id, date)}",
        *(f"--labels={k}={v}" for k, v in sorted(labels.items())),
    ]
    if gpu:
        args.append(f"--dataflow_service_options=worker_accelerator={s.embed_accelerator}")
    if s.subnetwork:
        args.append(f"--subnetwork={s.subnetwork}")
    return args


def custom_job(
    s: GcpSettings,
    task_id: str,
    date: str,
    args: Sequence[str],
    *,
    machine_type: str,
    image: str,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    timeout_s: int,
) -> dict[str, Any]:
    """A Vertex AI CustomJob (the REST resource, snake_case as the provider passes it): one
    replica running ``vsearch ARGS`` in the image, as the service account, with the labels."""
    machine: dict[str, Any] = {"machine_type": machine_type}
    if accelerator_type:
        machine |= {"accelerator_type": accelerator_type, "accelerator_count": accelerator_count}
    return {
        "display_name": job_name(task_id, date),
        "labels": dict(s.labels) | {"stage": task_id.replace("_", "-")},
        "job_spec": {
            "worker_pool_specs": [
                {
                    "machine_spec": machine,
                    "replica_count": 1,
                    "container_spec": {
                        "image_uri": image,
                        "command": ["vsearch"],
                        "args": list(args),
                    },
                }
            ],
            "service_account": s.service_account,
            # Vertex stops the job past this (Airflow's own timeout cancels it earlier).
            "scheduling": {"timeout": f"{timeout_s}s"},
        },
    }


def finish_args(stage: str, workdir: str, date: str) -> list[str]:
    """``vsearch finish`` for one stage of one day, after its Flex Template job: the day's run
    summary, completion marker and (embed) partition commit, from what the job wrote."""
    return ["finish", stage, f"--workdir={workdir}", f"--date={date}"]


def backfill_args(stage: str, catalog: str, workdir: str, date: str, stage_flags: str) -> list[str]:
    """``vsearch backfill`` for one stage of one day: it reads the earlier stages' results from
    their run summaries and skips the stage when it is already done for the day."""
    args = [
        "backfill",
        f"--catalog={catalog}",
        f"--workdir={workdir}",
        f"--start={date}",
        f"--end={date}",
        f"--stages={stage}",
    ]
    if stage_flags.strip():
        args.append(f"--stage-flags={stage}={stage_flags.strip()}")
    return args


# ------------------------------------------------------------------ BigQuery


def embeddings_load_config(s: GcpSettings, date: str, source_uris: Sequence[str]) -> dict[str, Any]:
    """A BigQuery load job: the day's committed embedding files (the partition's _manifest.json
    names them) replace the table's partition for that day (decorator ``$YYYYMMDD`` +
    WRITE_TRUNCATE: a re-run of the day replaces it, one attempt's files only)."""
    project, dataset, table = s.bigquery_table.split(".")
    return {
        "load": {
            "sourceUris": list(source_uris),
            "sourceFormat": "PARQUET",
            "parquetOptions": {"enableListInference": True},
            "destinationTable": {
                "projectId": project,
                "datasetId": dataset,
                "tableId": f"{table}${date.replace('-', '')}",
            },
            "writeDisposition": "WRITE_TRUNCATE",
            "createDisposition": "CREATE_IF_NEEDED",
            # Ingestion-time daily partitions: the day is the partition (_PARTITIONDATE), as it
            # is the hive key dt= of the files, not a column inside them (DESIGN.md).
            "timePartitioning": {"type": "DAY"},
        },
        "labels": dict(s.labels) | {"stage": "load-embeddings"},
    }


# ------------------------------------------------------------------ alerts


def log_failed_run(context: Mapping[str, Any]) -> None:
    """The DAG's on_failure_callback: one ERROR line naming the run, its day and why it failed
    (a task failed, or the run passed dagrun_timeout). Composer's Cloud Logging keeps it; alert
    on it there (a log-based alert on "visual_search_daily run failed"), or add a notifier here."""
    import logging

    run = context.get("dag_run")
    logging.getLogger("vsearch.dag").error(
        "visual_search_daily run failed: run %s (logical date %s): %s",
        getattr(run, "run_id", "?"),
        getattr(run, "logical_date", "?"),
        context.get("reason") or context.get("exception") or "a task failed",
    )
