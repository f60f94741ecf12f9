"""The daily DAG's tasks in mode "gcp": the Google provider's operators, their requests built by
``vsearch_gcp`` from the one ``GcpSettings``. The DAG file wires them; nothing here runs a stage.

Every request is a template: the day (``run_date``), catalog and workdir come from the run's
params when the task runs, through the DAG's macros (``gcp_macros``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import vsearch_gcp
from airflow.providers.google.cloud.operators.bigquery import BigQueryInsertJobOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.providers.google.cloud.operators.vertex_ai.custom_job import CreateCustomJobOperator
from airflow.providers.google.cloud.sensors.gcs import GCSObjectsWithPrefixExistenceSensor
from vsearch_gcp import GcpSettings

from vsearch import registry  # the DAG file puts it on the path (dags/visual_search_daily.py)

# Dataflow retries a failed work item itself (4 times in batch); a task retry relaunches the
# whole job, so once is enough. Heavy Vertex jobs (train, build-index): once; a retried train
# resumes from its last epoch's checkpoint.
DATAFLOW_RETRIES = 1
VERTEX_RETRIES = 1
# Light tasks (gate, publish, reading a small file, a BigQuery load): cheap and idempotent.
LIGHT_RETRIES = 3


def split_gs(uri: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ("bucket", "a/b")."""
    if not uri.startswith("gs://"):
        raise ValueError(f"mode gcp needs gs:// URIs for catalog and workdir, got {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix.rstrip("/")


def gcp_macros(s: GcpSettings) -> dict[str, Callable[..., Any]]:
    """The DAG's macros that turn a run's params and day into launch requests."""

    def flex_body(
        task_id: str, stage: str, params: Mapping[str, Any], date: str, flags: Mapping[str, str]
    ) -> dict[str, Any]:
        day = {"catalog": params["catalog"], "workdir": params["workdir"], "date": date}
        return vsearch_gcp.flex_template_body(s, task_id, stage, date, day | dict(flags))

    def vertex_job(task_id: str, stage: str, params: Mapping[str, Any], date: str) -> dict:
        flags = {"train": params["train_args"], "gate": params["gate_args"]}.get(stage, "")
        args = vsearch_gcp.backfill_args(stage, params["catalog"], params["workdir"], date, flags)
        beam = registry.STAGES[stage].beam
        kind = "train" if stage == "train" else "driver" if beam else "light"
        if task_id == registry.EMBED_FULL_TASK:
            args.append("--full")  # backfill's: re-embed every image (a promoted model)
        if kind == "driver":  # the stage's own process here, its Beam jobs on Dataflow
            args += vsearch_gcp.dataflow_args(s, task_id, date)
        return vsearch_gcp.custom_job(
            s,
            task_id,
            date,
            args,
            machine_type={
                "train": s.train_machine_type,
                "driver": s.driver_machine_type,
                "light": s.light_machine_type,
            }[kind],
            image=s.worker_gpu_image if kind == "train" else s.image,
            accelerator_type=s.train_accelerator_type if kind == "train" else "",
            accelerator_count=s.train_accelerator_count if kind == "train" else 0,
            timeout_s=int(VERTEX_TIMEOUTS[task_id].total_seconds()),
        )

    def finish_job(task_id: str, stage: str, params: Mapping[str, Any], date: str) -> dict:
        """The light Vertex job that finishes a Flex Template stage's day (``vsearch finish``)."""
        return vsearch_gcp.custom_job(
            s,
            task_id,
            date,
            vsearch_gcp.finish_args(stage, params["workdir"], date),
            machine_type=s.light_machine_type,
            image=s.image,
            timeout_s=int(VERTEX_TIMEOUTS[task_id].total_seconds()),
        )

    return {
        "flex_body": flex_body,
        "vertex_job": vertex_job,
        "finish_job": finish_job,
        "gs_bucket": lambda uri: split_gs(uri)[0],
        "gs_prefix": lambda uri: split_gs(uri)[1],
        "load_config": lambda date, uris: vsearch_gcp.embeddings_load_config(s, date, uris),
    }


DATE = "{{ run_date(params, dag_run) }}"
# The Beam stages launched as Dataflow Flex Templates (as beam_launch says). build-index is a
# Beam stage too, but its driver trains the quantizer on a sample: it runs as a Vertex job
# ("driver" machine) that launches its Beam jobs on Dataflow.
FLEX_STAGES = ("preprocess", "embed")
# Heavy Vertex jobs retry once (a retried train resumes from its checkpoint); light ones more.
STAGE_RETRIES = {"gate": LIGHT_RETRIES, "publish": LIGHT_RETRIES}
VERTEX_TIMEOUTS: dict[str, dt.timedelta] = {}  # filled by vertex_stage: the task's own timeout


def catalog_sensor(s: GcpSettings, timeout: dt.timedelta) -> GCSObjectsWithPrefixExistenceSensor:
    """Waits (in the triggerer, no worker slot) for CATALOG/dt=D/listings.* (.parquet or .jsonl)."""
    return GCSObjectsWithPrefixExistenceSensor(
        task_id="wait_for_catalog",
        bucket="{{ gs_bucket(params.catalog) }}",
        prefix="{{ gs_prefix(params.catalog) }}/dt=" + DATE + "/listings.",
        google_cloud_conn_id=s.gcp_conn_id,
        deferrable=True,
        poke_interval=600,
        timeout=timeout.total_seconds(),
        mode="reschedule",  # used only if the triggerer is unavailable
        retries=LIGHT_RETRIES,
    )


def flex_stage(
    s: GcpSettings, task_id: str, stage: str, timeout: dt.timedelta, **flags: str
) -> DataflowStartFlexTemplateOperator:
    """A Beam stage as a Flex Template launch of the image; the task waits in the triggerer and
    a killed task cancels the job (the operator and its trigger: ``cancel_on_kill``)."""
    return DataflowStartFlexTemplateOperator(
        task_id=task_id,
        body="{{ flex_body(task.task_id, '"
        + stage
        + "', params, run_date(params, dag_run), "
        + json.dumps(flags)  # a JSON object is a Jinja dict literal
        + ") }}",
        location=s.region,
        project_id=s.project,
        gcp_conn_id=s.gcp_conn_id,
        deferrable=True,
        append_job_name=True,  # each attempt gets its own job name
        cancel_on_kill=True,
        drain_pipeline=False,  # batch jobs cancel
        cancel_timeout=600,
        retries=DATAFLOW_RETRIES,
        execution_timeout=timeout,
    )


def beam_stage(
    s: GcpSettings, task_id: str, stage: str, timeout: dt.timedelta, **flags: str
) -> DataflowStartFlexTemplateOperator | CreateCustomJobOperator:
    """preprocess or embed, as ``beam_launch`` says: a Flex Template launch (the DAG adds the
    task that finishes its day, ``finish_stage``), or its driver in a Vertex job, which
    finishes the day itself (``flags`` are the template's; a driver's come from ``vsearch
    backfill``)."""
    if s.beam_launch == "flex_template":
        return flex_stage(s, task_id, stage, timeout, **flags)
    return vertex_stage(s, task_id, stage, timeout, retries=DATAFLOW_RETRIES)


def vertex_stage(
    s: GcpSettings, task_id: str, stage: str, timeout: dt.timedelta, retries: int | None = None
) -> CreateCustomJobOperator:
    """A stage as a Vertex AI custom job from the image (`vsearch backfill --stages STAGE`); a
    killed task cancels the job (the operator's on_kill)."""
    if retries is None:
        retries = STAGE_RETRIES.get(stage, VERTEX_RETRIES)
    return _vertex_task(s, task_id, "vertex_job", stage, retries, timeout)


def finish_stage(s: GcpSettings, stage: str, timeout: dt.timedelta) -> CreateCustomJobOperator:
    """After a stage's Flex Template task: a light Vertex job of the image that finishes the
    day from what the job wrote (``vsearch finish STAGE``: run summary, completion marker,
    embed's partition commit). It refuses while the job's counts are missing, and it is
    idempotent, so it retries like the other light tasks. It needs the project's code, which
    Composer's workers do not have: hence a Vertex job, not a Python task."""
    task_id = registry.finish_task(stage)
    return _vertex_task(s, task_id, "finish_job", stage, LIGHT_RETRIES, timeout)


def _vertex_task(
    s: GcpSettings, task_id: str, macro: str, stage: str, retries: int, timeout: dt.timedelta
) -> CreateCustomJobOperator:
    """A Vertex AI custom job whose request the DAG's ``macro`` renders when the task runs."""
    VERTEX_TIMEOUTS[task_id] = timeout
    return CreateCustomJobOperator(
        task_id=task_id,
        custom_job="{{ "  # type: ignore[arg-type]
        + macro
        + "(task.task_id, '"
        + stage
        + "', params, run_date(params, dag_run)) }}",
        region=s.region,
        project_id=s.project,
        gcp_conn_id=s.gcp_conn_id,
        deferrable=True,
        retries=retries,
        execution_timeout=timeout,
    )


def load_embeddings(s: GcpSettings) -> BigQueryInsertJobOperator:
    """The day's committed embedding files (named by the embedding_files task) into the table's
    partition for the day, replacing it."""
    return BigQueryInsertJobOperator(
        task_id="load_embeddings",
        configuration=(
            "{{ load_config(run_date(params, dag_run), ti.xcom_pull(task_ids='embedding_files')) }}"
        ),  # type: ignore[arg-type]
        project_id=s.bigquery_table.split(".")[0],
        location=None,
        gcp_conn_id=s.gcp_conn_id,
        deferrable=True,
        retries=LIGHT_RETRIES,
        execution_timeout=dt.timedelta(hours=1),
    )


def read_gcs_json(conn_id: str, uri: str) -> Any:
    """One small JSON object from gs:// (runs in Airflow's own environment: no pipeline code)."""
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    bucket, name = split_gs(uri)
    return json.loads(GCSHook(gcp_conn_id=conn_id).download(bucket_name=bucket, object_name=name))


def promoted_branch(conn_id: str, workdir: str, date: str) -> str:
    """embed_full when the day's gate promoted a model (its run summary says so), else
    embed_incremental: the gate ran in Vertex, so its decision is read from its summary."""
    summary = read_gcs_json(conn_id, f"{workdir.rstrip('/')}/runs/dt={date}/gate.json")
    return registry.embed_task(bool(summary["extra"]["promoted"]))  # the field of GateDecision


def embedding_files(conn_id: str, workdir: str, date: str) -> list[str]:
    """The files the day's embedding partition committed (its _manifest.json), of the model the
    day's embed ran with: what the load reads, so no other attempt's file is ever loaded."""
    root = workdir.rstrip("/")
    version = read_gcs_json(conn_id, f"{root}/runs/dt={date}/embed.json")["model_version"]
    partition = f"{root}/embeddings/model={version}/dt={date}"
    manifest = read_gcs_json(conn_id, f"{partition}/_manifest.json")
    files = [f"{partition}/{f['name']}" for f in manifest["files"]]
    if not files:  # a day with no new or changed photo: its partition is empty
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"{partition} committed no files: nothing to load")
    return files
