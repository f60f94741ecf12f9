"""A retried training task resumes after the last finished epoch; TensorBoard logs land in WORKDIR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from core import paths, storage  # noqa: E402
from models import retrieval_eval  # noqa: E402
from models.config import TrainConfig  # noqa: E402
from pipelines.train import run as train  # noqa: E402
from tests.conftest import TINY_IMAGE_SIZE, copy_workdir  # noqa: E402


class Preempted(RuntimeError):
    """Stands in for the worker dying after an epoch (preemption, task timeout)."""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_retry_resumes_from_the_last_epoch_not_from_scratch(
    trained_workdir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = copy_workdir(trained_workdir, str(tmp_path / "work"))
    config = TrainConfig(
        workdir=work, date="2026-01-01", image_size=TINY_IMAGE_SIZE, embedding_dim=16,
        epochs=2, batch_size=32, seed=3, localiser_steps=0,
    )  # fmt: skip
    original = retrieval_eval.RetrievalEvalCallback.on_epoch_end

    def die_after_first_epoch(self, epoch, logs=None):  # type: ignore[no-untyped-def]
        original(self, epoch, logs)
        raise Preempted(f"killed after epoch {epoch + 1}")

    with monkeypatch.context() as m:
        m.setattr(retrieval_eval.RetrievalEvalCallback, "on_epoch_end", die_after_first_epoch)
        with pytest.raises(Preempted):
            train(config)
    backups = [u for u in storage.list_prefix(work) if "/backup/" in u]
    assert any(u.endswith("training_metadata.json") for u in backups), backups
    version = backups[0].split("/models/")[1].split("/")[0]

    result = train(config)  # the retry: same settings, same data, same version

    assert result.version == version
    metrics = json.loads(
        storage.read_text(storage.join(paths.model_dir(work, version), "metrics.json"))
    )
    assert [h["epoch"] for h in metrics["history"]] == [2]  # epoch 1 was not trained again
    assert not storage.list_prefix(paths.train_backup_dir(work, version))  # removed when done
    logs = storage.list_prefix(paths.train_logs_dir(work, version))
    assert logs and all(u.startswith(work) for u in logs)
    assert any("tfevents" in storage.basename(u) for u in logs)
