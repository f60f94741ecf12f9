"""Export: one SavedModel with two serving signatures and the TF Transform graph inside.

``serving_default``: ``images`` tf.string [N] (encoded JPEG/PNG/GIF/BMP bytes), decoded and
letterboxed in the graph by ``features.decode_letterboxed`` (the pipelines' Pillow rule);
``serving_pixels``: ``pixels`` uint8 [N, S, S, 3], for callers that already decoded the photo
safely (``core.images.decode_image``), as the embed job does. A model trained with a
localiser also has ``serving_query`` (bytes) and ``serving_query_pixels`` (``pixels`` uint8
[N, Q, Q, 3] letterboxed at ``QUERY_SIZE``, and ``whole`` uint8 [N, S, S, 3], the same photos
letterboxed at the model's size as catalog photos are): a shopper's photo as the whole photo plus
the localiser's best box cut from the Q frame, embedded in one model call (``embedding``
[N, V, D], ``boxes`` [N, V, 4] in frame fractions, view 0 the whole photo, ``box_scores`` [N, V]). Both return ``embedding``
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

from core import storage
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

SIGNATURE = "serving_default"  # raw encoded bytes in
PIXELS_SIGNATURE = "serving_pixels"  # decoded uint8 pixels in
# With a localiser: a query photo as the whole frame plus its best boxes (issue 29).
QUERY_SIGNATURE = "serving_query"  # raw encoded bytes in
# pixels [N, Q, Q, 3] at QUERY_SIZE and whole [N, S, S, 3] at the model's size
QUERY_PIXELS_SIGNATURE = "serving_query_pixels"
WHOLE_INPUT = "whole"  # the query signature's whole photo at the model's size
# The side a query photo is letterboxed to before boxes are cut from it: an item at 20 % of the
# frame keeps ~50 px, enough for the model's 96 after a bilinear enlargement; more costs decode
# time and buys little (the phone photos' own blur is coarser).
QUERY_SIZE = 256
# Boxes per query photo besides the whole photo. Search scores a listing by its best view, each
# box's cosine lowered by its localiser score's log (search/photo_search.view_offsets), so a box
# the localiser doubts must match much better to win. Measured on the phone catalog
# (BENCHMARKS.md, "Buyer photos", 160 px, held-out / all buyer photos hit@10): the best box alone
# 0.533 / 0.644; the best of 2 boxes 0.563 / 0.656; of 3 the same (0.563 / 0.660) for one more
# model pass; plain best cosine over 3 boxes (no prior) 0.492 / 0.597: the other boxes fall on
# the room's other products.
QUERY_BOXES = 2
# A box is cut with this much context around the item (of its longer side): with 0.1 the crop
# clips a loose box's item (held-out hit@10 0.518 vs 0.533 at 0.2; 0.3: 0.523).
QUERY_MARGIN = 0.2
OTHER_CLASS = ""  # the OOV bucket: rare or unseen classes


def head_vocabulary(tft_output: tft.TFTransformOutput, label: str) -> list[str]:
    """Class names of a head in index order, the OOV bucket last."""
    words = tft_output.vocabulary_by_name(vocab_name(label))
    return [w.decode() if isinstance(w, bytes) else str(w) for w in words] + [OTHER_CLASS]


class ServingModule(tf.Module):
    def __init__(
        self,
        tft_output: tft.TFTransformOutput,
        embedder: keras.Model,
        heads: tuple[str, ...],
        localiser: keras.Model | None = None,
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
        self.localiser = localiser
        if localiser is not None:
            q = QUERY_SIZE
            self.serve_query_pixels = tf.function(
                self._query,
                input_signature=[
                    tf.TensorSpec([None, q, q, 3], tf.uint8, name="pixels"),
                    tf.TensorSpec([None, size, size, 3], tf.uint8, name=WHOLE_INPUT),
                ],
            )
            self.serve_query = tf.function(
                lambda images: self._query(
                    decode_letterboxed(images, q), decode_letterboxed(images, size)
                ),
                input_signature=[tf.TensorSpec([None], tf.string, name="images")],
            )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(decode_letterboxed(images, self.image_size))

    def _query(self, frames: tf.Tensor, whole: tf.Tensor) -> dict[str, tf.Tensor]:
        """Query frames [N, Q, Q, 3] and the same photos at the model's size [N, S, S, 3] -> per
        view (the whole photo, then the localiser's boxes), all in one model call: ``embedding``
        [N, V, D], ``boxes`` [N, V, 4] (frame fractions), ``box_scores`` [N, V]. The whole view is
        the photo exactly as a catalog photo is embedded, so a listing's own photo scores 1.0."""
        from models.localiser import crop_boxes, propose_boxes

        assert self.localiser is not None  # the query signatures exist only with one
        n, s, k = tf.shape(frames)[0], self.image_size, QUERY_BOXES
        boxes, scores = propose_boxes(
            self.localiser, frames, k, size=int(self.localiser.input_shape[1])
        )
        crops = tf.reshape(crop_boxes(frames, boxes, s, QUERY_MARGIN), [n, k, s, s, 3])
        views = tf.concat([whole[:, None], crops], axis=1)
        emb = self._outputs(tf.reshape(views, [-1, s, s, 3]))[EMBEDDING]
        frame_box = tf.tile(tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), [n, 1, 1])
        return {
            EMBEDDING: tf.reshape(emb, [n, k + 1, -1]),
            "boxes": tf.concat([frame_box, boxes], axis=1),
            "box_scores": tf.concat([tf.ones([n, 1]), scores], axis=1),
        }

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
    tft_output: tft.TFTransformOutput,
    embedder: keras.Model,
    heads: tuple[str, ...],
    out_uri: str,
    localiser: keras.Model | None = None,
) -> None:
    """Write the SavedModel to ``out_uri`` (any URI); appears complete or not at all locally.
    With ``localiser``, also the query signatures (the whole frame plus its best boxes)."""
    module = ServingModule(tft_output, embedder, heads, localiser)
    signatures = {
        SIGNATURE: module.serve.get_concrete_function(),
        PIXELS_SIGNATURE: module.serve_pixels.get_concrete_function(),
    }
    if localiser is not None:
        signatures[QUERY_SIGNATURE] = module.serve_query.get_concrete_function()
        signatures[QUERY_PIXELS_SIGNATURE] = module.serve_query_pixels.get_concrete_function()
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
