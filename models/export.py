"""Export: one SavedModel that takes raw encoded image bytes and contains the TF Transform graph.

Serving signature ``serving_default``: ``images`` tf.string [N] -> ``embedding`` float32 [N, D]
(L2-normalised) and, per label head, ``<label>`` (string class name; ``""`` for the OOV/"other"
bucket) and ``<label>_score`` (softmax probability of that class). Query-time preprocessing is the
training-time preprocessing because it is the same graph (``transform_features_layer``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import keras
import tensorflow as tf
import tensorflow_transform as tft

from models.features import IMAGE_KEY, LABEL_KEYS, vocab_name
from models.model import EMBEDDING
from vsearch.core import storage

SIGNATURE = "serving_default"
OTHER_CLASS = ""  # the OOV bucket: rare or unseen classes


def head_vocabulary(tft_output: tft.TFTransformOutput, label: str) -> list[str]:
    """Class names of a head in index order, the OOV bucket last."""
    words = tft_output.vocabulary_by_name(vocab_name(label))
    return [w.decode() if isinstance(w, bytes) else str(w) for w in words] + [OTHER_CLASS]


class ServingModule(tf.Module):
    def __init__(
        self, tft_output: tft.TFTransformOutput, embedder: keras.Model, heads: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.tft_layer = tft_output.transform_features_layer()
        self.label_heads = tuple(h for h in heads if h in LABEL_KEYS)
        outputs = embedder.output
        # The instance head (train listing ids) is a training aid only: it is not served.
        self.model = keras.Model(
            embedder.input, {k: outputs[k] for k in (EMBEDDING, *self.label_heads)}
        )
        self.vocabularies = {
            h: tf.constant(head_vocabulary(tft_output, h)) for h in self.label_heads
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer({IMAGE_KEY: images})
        out = self.model(transformed[IMAGE_KEY], training=False)
        result = {EMBEDDING: tf.cast(out[EMBEDDING], tf.float32)}
        for head in self.label_heads:
            probs = tf.nn.softmax(tf.cast(out[head], tf.float32), axis=-1)
            result[head] = tf.gather(self.vocabularies[head], tf.argmax(probs, axis=-1))
            result[f"{head}_score"] = tf.reduce_max(probs, axis=-1)
        return result


def export_embedder(
    tft_output: tft.TFTransformOutput, embedder: keras.Model, heads: tuple[str, ...], out_uri: str
) -> None:
    """Write the SavedModel to ``out_uri`` (any URI); appears complete or not at all locally."""
    module = ServingModule(tft_output, embedder, heads)
    signatures = {SIGNATURE: module.serve.get_concrete_function()}
    if storage.is_gcs(out_uri):
        # tf.saved_model writes gs:// itself; a re-export of the same version replaces the old one.
        storage.delete_prefix(out_uri)
        tf.saved_model.save(module, out_uri, signatures=signatures)
        return
    final = out_uri.removeprefix("file://")
    parent = os.path.dirname(final.rstrip("/")) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".embedder-", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_serving(uri: str) -> Any:
    """The exported model's ``serving_default`` function (call it with ``images=<tf.string [N]>``)."""
    return tf.saved_model.load(storage.local_dir(uri)).signatures[SIGNATURE]
