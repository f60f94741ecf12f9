"""The multitask embedding model: backbone -> Dense(D) -> L2-normalise -> one cosine-softmax head per label.

The embedding is the L2-normalised penultimate layer (Etsy). Each head's logits are
``scale * cos(embedding, class centre)``, so the classification proxy shapes exactly the geometry the
index searches (inner product of unit vectors). Labels of -1 (missing) contribute no loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from models.backbones import build_backbone, freeze_all_but_top, load_backbone_weights
from models.config import TrainConfig
from models.features import IMAGE_KEY

EMBEDDING = "embedding"


class CosineHead(keras.layers.Layer):
    """Logits = scale * <x, w_c / |w_c|> for unit-norm x (NormFace-style classifier)."""

    def __init__(self, num_classes: int, scale: float, **kwargs: object) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.num_classes = num_classes
        self.scale = scale

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.centres = self.add_weight(
            name="centres",
            shape=(int(input_shape[-1]), self.num_classes),
            initializer="glorot_normal",
        )

    def call(self, x: object) -> object:
        w = self.centres / (
            ops.sqrt(ops.sum(ops.square(self.centres), axis=0, keepdims=True)) + 1e-12
        )
        return self.scale * ops.matmul(ops.cast(x, "float32"), w)


class L2Normalize(keras.layers.Layer):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(dtype="float32", **kwargs)

    def call(self, x: object) -> object:
        x = ops.cast(x, "float32")
        return x / (ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)) + 1e-12)


@dataclass(frozen=True)
class MultitaskModel:
    """``embedder``: image -> {embedding, <head> logits}; ``trainer``: image -> {<head> logits}.

    Both share every layer (and so every weight); ``backbone`` is exposed for freezing and tests.
    """

    embedder: keras.Model
    trainer: keras.Model
    backbone: keras.Model
    heads: tuple[str, ...]


def build_model(config: TrainConfig, num_classes: dict[str, int]) -> MultitaskModel:
    """``num_classes``: head name -> number of classes (vocabulary + OOV bucket, or listing ids)."""
    backbone = build_backbone(config.backbone, config.image_size)
    if config.backbone_weights:
        load_backbone_weights(backbone, config.backbone_weights)
    if config.trainable_layers is not None:
        freeze_all_but_top(backbone, config.trainable_layers)
    image = keras.Input((config.image_size, config.image_size, 3), name=IMAGE_KEY)
    features = backbone(image)
    x = keras.layers.Dense(config.embedding_dim, name="embedding_dense")(features)
    x = keras.layers.BatchNormalization(name="embedding_bn")(x)
    embedding = L2Normalize(name=EMBEDDING)(x)
    heads = tuple(name for name, n in num_classes.items() if n > 0 and config.weight(name) > 0)
    logits = {
        name: CosineHead(num_classes[name], config.cosine_scale, name=name)(embedding)
        for name in heads
    }
    embedder = keras.Model(image, {EMBEDDING: embedding, **logits}, name="embedder")
    trainer = keras.Model(image, logits, name="trainer")
    return MultitaskModel(embedder=embedder, trainer=trainer, backbone=backbone, heads=heads)


def masked_sparse_ce(y_true: Any, y_pred: Any, margin: float = 0.0) -> Any:
    """Sparse softmax cross-entropy where a label of -1 (missing) contributes zero loss.

    ``margin`` (in logit units) is taken off the true class's logit before the softmax: with
    cosine logits that is CosFace's additive margin, which makes a class win only with room to
    spare, so that classes never trained on (held-out listings) still fall apart."""
    y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    present = y_true >= 0
    labels = ops.where(present, y_true, 0)
    if margin:
        y_pred = ops.cast(y_pred, "float32") - margin * ops.one_hot(labels, ops.shape(y_pred)[-1])
    ce = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
    return ce * ops.cast(present, ce.dtype)


def margin_ce(margin: float) -> Any:
    """``masked_sparse_ce`` with a fixed margin, as a Keras loss."""

    def loss(y_true: Any, y_pred: Any) -> Any:
        return masked_sparse_ce(y_true, y_pred, margin)

    return loss


class MaskedAccuracy(keras.metrics.Metric):
    """Top-1 accuracy over examples whose label is present."""

    def __init__(self, name: str = "acc", **kwargs: object) -> None:
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        present = ops.cast(y_true >= 0, "float32")
        hit = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
        self.correct.assign_add(ops.sum(hit * present))
        self.total.assign_add(ops.sum(present))

    def result(self) -> object:
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self) -> None:
        self.correct.assign(0.0)
        self.total.assign(0.0)
