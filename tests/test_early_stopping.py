"""Training stops when the retrieval metric stops improving, and keeps the best epoch's weights."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from models.config import TrainConfig  # noqa: E402
from models.retrieval_eval import RetrievalEvalCallback  # noqa: E402
from models.settings import SELECTION_METRIC  # noqa: E402


class ScriptedRetrieval(RetrievalEvalCallback):
    """The real callback, with the retrieval test's answers scripted per epoch."""

    def __init__(self, model: keras.Model, recalls: list[float], patience: int) -> None:
        super().__init__(model, eval_set=None, images=lambda: [], log_dir=None, patience=patience)  # type: ignore[arg-type]
        self.recalls = list(recalls)
        self.weights_seen: list[list[np.ndarray]] = []

    def measure(self) -> dict[str, float]:
        self.weights_seen.append([w.copy() for w in self.embedder.get_weights()])
        return {SELECTION_METRIC: self.recalls.pop(0)}


def _fit(recalls: list[float], patience: int, epochs: int) -> tuple[Any, ScriptedRetrieval]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.rand(32, 4), np.random.rand(32, 2)
    callback = ScriptedRetrieval(model, recalls, patience)
    history = model.fit(x, y, epochs=epochs, batch_size=8, callbacks=[callback], verbose=0)
    return history, callback


def test_training_stops_after_patience_epochs_without_a_better_metric() -> None:
    recalls = [0.2, 0.5, 0.45, 0.49, 0.5, 0.48, 0.9, 0.95]  # the best before the plateau: epoch 2
    history, callback = _fit(recalls, patience=4, epochs=len(recalls))

    assert len(history.history["loss"]) == 6  # epochs 3..6 did not beat 0.5 (a tie is no gain)
    assert callback.stopped_early_at == 6
    assert callback.best is not None and callback.best["epoch"] == 2
    for kept, seen in zip(callback.embedder.get_weights(), callback.weights_seen[1], strict=True):
        np.testing.assert_array_equal(kept, seen)  # the model ends with epoch 2's weights


def test_a_metric_that_keeps_rising_trains_every_epoch_and_zero_patience_never_stops() -> None:
    history, callback = _fit([0.1, 0.2, 0.3, 0.4, 0.5], patience=2, epochs=5)
    assert len(history.history["loss"]) == 5 and callback.stopped_early_at is None

    history, callback = _fit([0.5, 0.1, 0.1, 0.1, 0.1], patience=0, epochs=5)
    assert len(history.history["loss"]) == 5 and callback.stopped_early_at is None


def test_a_negative_patience_is_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--early-stopping-patience"):
        TrainConfig(workdir="w", date="2026-01-01", early_stopping_patience=-1)
