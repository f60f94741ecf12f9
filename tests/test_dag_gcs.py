"""The daily DAG on gs:// (loopback GCS server), run by Airflow itself (``dag.test()``).

Its own file so that it runs beside tests/test_dag.py on the other test worker (make test).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from core import paths, pointers, storage
from tests.test_dag import TINY_GATE, TINY_TRAIN, _assert_index_answers, _run_days


def _upload_tree(local: str, uri: str) -> None:
    for root, _, files in os.walk(local):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local).replace(os.sep, "/")
            storage.write_bytes(storage.join(uri, rel), Path(path).read_bytes())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_daily_flow_on_gcs(
    tiny_catalog: str, trained_workdir: str, gcs_bucket: str, tmp_path: Path
) -> None:
    """Catalog and WORKDIR on gs:// (loopback GCS server): embed, index, publish, query.

    preprocess, train and gate read and write through TensorFlow's own GCS client, which has
    no setting to reach an emulator; here they are marked done by dag.test() and their outputs
    (a model trained on the same catalog) are uploaded to the bucket first. Every other task
    runs for real against gs://, including the branch that reads the gate's decision.
    """
    catalog, workdir = f"{gcs_bucket}/catalog", f"{gcs_bucket}/work"
    _upload_tree(tiny_catalog, catalog)
    _upload_tree(trained_workdir, workdir)
    conf = {
        "catalog": catalog,
        "workdir": workdir,
        "train_args": TINY_TRAIN,
        "gate_args": TINY_GATE,
    }
    os.environ["DAG_MARK_SUCCESS"] = "preprocess|train|gate"
    try:
        (day1,) = _run_days(tmp_path, conf, "2026-01-01")
    finally:
        del os.environ["DAG_MARK_SUCCESS"]
    assert day1["state"] == "success", day1
    assert day1["tasks"]["embed_full"] == "success" and day1["tasks"]["publish"] == "success"
    current = pointers.read_pointer(paths.current_index_pointer(workdir)).value
    assert current and current.startswith(workdir + "/indexes/")
    version = pointers.read_pointer(paths.published_model_pointer(workdir)).value
    assert storage.glob(
        storage.join(paths.embeddings_dir(workdir, version, "2026-01-01"), "*.parquet")
    )
    _assert_index_answers(catalog, workdir, dt.date(2026, 1, 1))
