"""Retrieval test run while training (Etsy): classification accuracy alone does not say whether
similar things are near each other, so after every epoch the eval split is embedded and searched.

The metrics are ``models/retrieval_metrics.py``'s: held-out review photos searched against the
whole catalog's listing photos (training listings included: what a shopper's photo meets), beside
the older held-out-gallery figures (``heldout_`` prefix). ``<label>_accuracy`` is each head's top-1
accuracy on labelled held-out images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.capabilities import SELECTION_METRIC
from models.dataset import EvalSet
from models.features import LABEL_KEYS
from models.model import EMBEDDING
from models.retrieval_metrics import shopper_metrics


def _scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar via core TF (``tf.summary.scalar`` needs the tensorboard package)."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=metadata)


def retrieval_metrics(emb: np.ndarray, eval_set: EvalSet, k: int = 10) -> dict[str, float]:
    """Shopper-view metrics (whole-catalog gallery) beside the held-out-gallery ones."""
    return shopper_metrics(
        emb, eval_set.listing_ids, eval_set.is_review, eval_set.held_out, eval_set.labels, k
    )


def head_accuracies(logits: dict[str, np.ndarray], eval_set: EvalSet) -> dict[str, float]:
    out = {}
    for label in LABEL_KEYS:
        if label in logits:
            y = eval_set.labels[label]
            present = (y >= 0) & eval_set.held_out  # never the training listings' photos
            if present.any():
                out[f"{label}_accuracy"] = float(
                    np.mean(np.argmax(logits[label][present], axis=1) == y[present])
                )
    return out


def evaluate(embed_batches: Iterable[dict[str, np.ndarray]], eval_set: EvalSet) -> dict[str, float]:
    """Metrics from model outputs ({embedding, <head> logits}) batched in the EvalSet's order."""
    parts: dict[str, list[np.ndarray]] = {}
    for out in embed_batches:
        for key, value in out.items():
            parts.setdefault(key, []).append(np.asarray(value))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    if len(arrays[EMBEDDING]) != len(eval_set):
        raise ValueError(f"{len(arrays[EMBEDDING])} embeddings for {len(eval_set)} eval images")
    metrics = retrieval_metrics(arrays[EMBEDDING], eval_set)
    metrics.update(head_accuracies({k: v for k, v in arrays.items() if k != EMBEDDING}, eval_set))
    return metrics


class RetrievalEvalCallback(keras.callbacks.Callback):
    """Runs the retrieval test after each epoch, logs it, and keeps the best weights by recall@10.

    ``images``: a callable returning a fresh iterator of transformed eval image batches.
    ``patience``: stop training after this many epochs without a better metric (0: never).
    ``min_epochs``: never stop before this epoch. Early epochs at a high learning rate are noisy on
    a small eval split: a lucky first epoch must not end training before the model has learnt
    (Keras's ``EarlyStopping(start_from_epoch=...)`` guards the same thing).
    """

    def __init__(
        self,
        embedder: keras.Model,
        eval_set: EvalSet,
        images: Callable[[], Iterable[tf.Tensor]],
        log_dir: str | None,
        patience: int = 0,
        min_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.patience = patience
        self.min_epochs = min_epochs
        self.stopped_early_at: int | None = None
        self.embedder = embedder
        self.eval_set = eval_set
        self.images = images
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._best_weights: list[np.ndarray] | None = None
        self._t0 = time.perf_counter()

    def measure(self) -> dict[str, float]:
        batches = (
            {k: v.numpy() for k, v in self.embedder(x, training=False).items()}
            for x in self.images()
        )
        return evaluate(batches, self.eval_set)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = self.measure()
        record = {
            "epoch": epoch + 1,
            "elapsed_s": round(time.perf_counter() - self._t0, 1),
            **metrics,
        }
        record.update({f"train_{k}": float(v) for k, v in (logs or {}).items()})
        self.history.append(record)
        if self.writer is not None:
            with self.writer.as_default(step=epoch + 1):
                for key, value in record.items():
                    if key != "epoch":
                        _scalar(key, float(value))
            self.writer.flush()
        if self.best is None or metrics.get(SELECTION_METRIC, 0.0) > self.best.get(
            SELECTION_METRIC, 0.0
        ):
            self.best = record
            self._best_weights = self.embedder.get_weights()
        print(
            f"[retrieval] epoch {epoch + 1}: "
            + json.dumps({k: round(v, 4) for k, v in metrics.items()}),
            flush=True,
        )
        since_best = record["epoch"] - self.best["epoch"]
        if (
            self.patience
            and since_best >= self.patience
            and epoch + 1 >= self.min_epochs
            and self.model is not None
        ):
            self.model.stop_training = True
            self.stopped_early_at = epoch + 1
            print(
                f"[retrieval] stopping early: {SELECTION_METRIC} has not improved for "
                f"{since_best} epochs (best {self.best[SELECTION_METRIC]:.4f} at epoch "
                f"{self.best['epoch']})",
                flush=True,
            )

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        # Checkpoint selection by the retrieval metric, not by loss.
        if self._best_weights is not None:
            self.embedder.set_weights(self._best_weights)
