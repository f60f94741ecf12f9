"""A stage told to stop while its Dataflow job runs cancels that job before it exits.

This is how a killed Airflow task reaches the Dataflow job in mode gcp's default launch
(``beam_launch: "vertex_driver"``): the task's on_kill cancels the stage's Vertex job, Vertex
stops its container with SIGTERM, and the stage cancels the job it submitted. It is also what an
engineer's Ctrl-C on a backfill does. The real stage runs in its own process on Beam's
DataflowRunner, which talks to the fake Dataflow API (tests/test_dag_gcp.py) and stages its
files on the loopback GCS server; nothing here reaches Google.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import paths, runs, storage
from tests.test_dag import REPO
from tests.test_dag_gcp import GCP, FakeDataflow, dataflow_port_80  # noqa: F401 (a fixture)

DATE = "2026-01-01"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_cancels_the_dataflow_job_and_finishes_nothing(
    dataflow_port_80: FakeDataflow,  # noqa: F811
    tiny_catalog: str,
    gcs_bucket: str,
    tmp_path: Path,
) -> None:
    workdir = str(tmp_path / "work")
    cmd = [
        sys.executable, "-m", "vsearch", "preprocess",
        "--catalog", tiny_catalog, "--workdir", workdir, "--date", DATE,
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west4",
        "--temp_location", f"{gcs_bucket}/tmp", "--dataflow_endpoint", dataflow_port_80.url,
        "--no_auth", "--sdk_container_image", GCP["image"], "--sdk_location", "container",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stage = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Submitted, and waiting for it: the fake has the job and has been asked for its state.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and stage.poll() is None:
            with dataflow_port_80.lock:
                polled = [p for m, p, _ in dataflow_port_80.calls if m == "GET" and "/jobs/" in p]
            if dataflow_port_80.jobs and polled:
                break
            time.sleep(0.5)
        assert stage.poll() is None, stage.communicate()[1].decode()[-4000:]
        (job_id,) = dataflow_port_80.jobs
        stage.send_signal(signal.SIGTERM)  # what Vertex does to a cancelled job's container
        out, err = stage.communicate(timeout=180)
    finally:
        if stage.poll() is None:
            stage.kill()
    stderr = err.decode()
    # The job was cancelled, through the Dataflow API, exactly once (Beam's client sends the
    # JobState's number: 5 is JOB_STATE_CANCELLED) ...
    cancels = [(p, b) for m, p, b in dataflow_port_80.calls if m == "PUT"]
    assert cancels == [
        (f"/v1b3/projects/my-project/locations/europe-west4/jobs/{job_id}", {"requestedState": 5})
    ], stderr[-4000:]
    assert dataflow_port_80.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLED"
    # ... the stage says so and exits as a process stopped by SIGTERM does ...
    assert stage.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    assert f"[preprocess] stopped: cancelled its Dataflow job {job_id}" in stderr
    assert (
        stderr.rstrip().splitlines()[-1] == "vsearch preprocess: preprocess was stopped (SIGTERM)"
    )
    # ... and it finished nothing of the day: no run summary, no completion marker.
    assert not storage.exists(paths.run_summary(workdir, "preprocess", DATE))
    assert not runs.is_done(workdir, "preprocess", DATE)
