"""Training stops when the retrieval metric stops improving, and keeps the best epoch's weights."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from models.capabilities import SELECTION_METRIC  # noqa: E402
from models.config import TrainConfig, default_epochs  # noqa: E402
from models.retrieval_eval import RetrievalEvalCallback  # noqa: E402


class ScriptedRetrieval(RetrievalEvalCallback):
    """The real callback, with the retrieval test's answers scripted per epoch."""

    def __init__(
        self, model: keras.Model, recalls: list[float], patience: int, min_epochs: int
    ) -> None:
        super().__init__(
            model,
            eval_set=None,  # type: ignore[arg-type]
            images=lambda: [],
            log_dir=None,
            patience=patience,
            min_epochs=min_epochs,
        )
        self.recalls = list(recalls)
        self.weights_seen: list[list[np.ndarray]] = []

    def measure(self) -> dict[str, float]:
        self.weights_seen.append([w.copy() for w in self.embedder.get_weights()])
        return {SELECTION_METRIC: self.recalls.pop(0)}


def _fit(
    recalls: list[float], patience: int, epochs: int, min_epochs: int = 0
) -> tuple[Any, ScriptedRetrieval]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.rand(32, 4), np.random.rand(32, 2)
    callback = ScriptedRetrieval(model, recalls, patience, min_epochs)
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


def test_a_lucky_first_epoch_does_not_stop_training_before_three_quarters_of_the_budget() -> None:
    # What a 200-listing catalog did in CI: chance recall at epoch 1, lower for a few epochs, and
    # then the model learns. Stopping at epoch 5 kept the chance weights and the gate refused them.
    # With 20 epochs (the default at 96 px) it may stop from epoch 15 on; this model beats its
    # lucky start at epoch 10 and keeps improving, so it trains all 20.
    recalls = [0.115, 0.044, 0.044, 0.053, 0.08, 0.09, 0.1, 0.1, 0.11, 0.12]
    recalls += [0.12 + 0.02 * i for i in range(1, 11)]
    config = TrainConfig(workdir="w", date="2026-01-01", epochs=default_epochs(96))
    assert config.epochs == len(recalls) and config.early_stopping_min_epochs == 15
    history, callback = _fit(
        recalls, patience=4, epochs=len(recalls), min_epochs=config.early_stopping_min_epochs
    )
    assert len(history.history["loss"]) == len(recalls) and callback.stopped_early_at is None
    assert callback.best is not None and callback.best["epoch"] == len(recalls)

    # A plateau after half the budget still stops: best at epoch 2, stopped at epoch 5 (not 6).
    plateau = [0.2, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
    history, callback = _fit(plateau, patience=3, epochs=10, min_epochs=5)
    assert callback.stopped_early_at == 5 and len(history.history["loss"]) == 5


def test_a_dip_while_the_learning_rate_is_high_does_not_end_a_long_schedule() -> None:
    # The phone catalog's 160-px run (50 epochs by default): best at epoch 27, then four epochs
    # of the noise a high learning rate makes. Half the budget as the floor stopped it at 31;
    # with three quarters it goes on, and the later, better epoch is the one kept.
    recalls = [0.02, 0.06, 0.06, 0.055, 0.07, 0.055, 0.07, 0.09, 0.126, 0.176, 0.181, 0.191]
    recalls += [0.186, 0.251, 0.196, 0.281, 0.271, 0.307, 0.241, 0.221, 0.231, 0.271, 0.291]
    recalls += [0.342, 0.302, 0.307, 0.387, 0.302, 0.367, 0.377, 0.352]  # epochs 24-31
    recalls += [0.38, 0.39, 0.41, 0.44, 0.43, 0.42, 0.42, 0.42, 0.42, 0.42]  # epochs 32-41
    config = TrainConfig(workdir="w", date="2026-01-01", epochs=default_epochs(160))
    assert config.epochs == 50 and config.early_stopping_min_epochs == 38

    _, callback = _fit(recalls, patience=4, epochs=len(recalls), min_epochs=25)  # the old floor
    assert callback.stopped_early_at == 31

    _, callback = _fit(
        recalls, patience=4, epochs=len(recalls), min_epochs=config.early_stopping_min_epochs
    )
    assert callback.stopped_early_at == 39 and callback.best is not None
    assert callback.best["epoch"] == 35


def test_a_negative_patience_is_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--early-stopping-patience"):
        TrainConfig(workdir="w", date="2026-01-01", early_stopping_patience=-1)
