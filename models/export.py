"""Export: one SavedModel with two serving signatures and the TF Transform graph inside.

``serving_default``: ``images`` tf.string [N] (encoded JPEG/PNG/GIF/BMP bytes), decoded and
letterboxed in the graph by ``features.decode_letterboxed`` (the pipelines' Pillow rule);
``serving_pixels``: ``pixels`` uint8 [N, S, S, 3], for callers that already decoded the photo
safely (``vsearch.core.images.decode_image``), as the embed job does. Both return ``embedding``
float32 [N, D] (L2-normalised) and, per label head, ``<label>`` (string class name; ``""`` for the
OOV/"other" bucket) and ``<label>_score`` (softmax probability of that class). Both normalise the
pixels with the TFT graph (``transform_features_layer``), so serving is training's preprocessing.
Load it through ``models.artifact``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf
import tensorflow_transform as tft

from models.features import (
    IMAGE_KEY,
    IMAGE_MEAN_KEY,
    IMAGE_STD_KEY,
    LABEL_KEYS,
    decode_letterboxed,
    normalize_pixels,
    vocab_name,
)
from models.model import EMBEDDING
from vsearch.core import storage

SIGNATURE = "serving_default"  # raw encoded bytes in
PIXELS_SIGNATURE = "serving_pixels"  # decoded uint8 pixels in
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
        self.image_size = int(tft_output.transformed_feature_spec()[IMAGE_KEY].shape[0])
        size = self.image_size
        self.serve_pixels = tf.function(
            self._outputs,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")],
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(decode_letterboxed(images, self.image_size))

    def _outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer({IMAGE_KEY: tf.cast(pixels, tf.int64)})
        x = normalize_pixels(
            transformed[IMAGE_KEY], transformed[IMAGE_MEAN_KEY], transformed[IMAGE_STD_KEY]
        )
        out = self.model(x, training=False)
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
    signatures = {
        SIGNATURE: module.serve.get_concrete_function(),
        PIXELS_SIGNATURE: module.serve_pixels.get_concrete_function(),
    }
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
