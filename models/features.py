"""Feature keys and the TF Transform ``preprocessing_fn`` (one place for both, as in TFT's examples).

Raw features (one row per image, listing photos and review photos alike):
  ``image``      PNG bytes of the sanitised image (``vsearch.core.images.encode_png``); serving sends the
                 same kind of bytes, so the graph below decodes training and query images alike.
  ``listing_id``, ``kind`` ("listing" | "review")  passed through for the retrieval evaluation.
  ``category``, ``color``, ``shape``, ``material``  labels, ``""`` when missing.

Transformed features:
  ``image``      float32 [S, S, 3], normalised per channel with full-pass mean/std.
  ``image_png``  the raw bytes, passed through so the gate can re-embed the same eval images with
                 any model's serving signature (fixed eval data across model versions).
  ``<label>``    int64 class index; ``-1`` when missing (its loss is masked); rare classes fold into
                 the OOV bucket (index = vocabulary size), a real "other" class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tensorflow as tf
import tensorflow_transform as tft

IMAGE_KEY = "image"
IMAGE_PNG_KEY = "image_png"
LISTING_ID_KEY = "listing_id"
KIND_KEY = "kind"
LABEL_KEYS = ("category", "color", "shape", "material")
MISSING_LABEL = -1
KIND_LISTING = "listing"
KIND_REVIEW = "review"

DEFAULT_IMAGE_SIZE = 96
# A class seen fewer times than this in the train split cannot be learnt and only adds noise to the
# softmax; it joins the OOV ("other") bucket instead.
DEFAULT_MIN_CLASS_COUNT = 5
# Pixels are normalised in [0, 1] first; the std floor keeps a constant channel from dividing by 0.
_STD_FLOOR = 1e-3


def raw_feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    keys = (IMAGE_KEY, LISTING_ID_KEY, KIND_KEY, *LABEL_KEYS)
    return {k: tf.io.FixedLenFeature([], tf.string) for k in keys}


def vocab_name(label: str) -> str:
    """The vocabulary file name TFT writes for a label (read back via TFTransformOutput)."""
    return f"vocab_{label}"


def decode_images(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Batch of encoded bytes -> float32 [N, S, S, 3] in [0, 1].

    ``decode_image`` accepts PNG/JPEG/GIF/BMP so a query may send any of them; the pipelines send
    sanitised PNGs of the right size, for which the resize is the identity.
    """

    def one(data: tf.Tensor) -> tf.Tensor:
        img = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        img = tf.image.resize(img, [image_size, image_size], method="bilinear", antialias=True)
        return tf.cast(img, tf.float32) / 255.0

    return tf.map_fn(
        one,
        encoded,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        parallel_iterations=8,
    )


def preprocessing_fn(
    inputs: dict[str, tf.Tensor],
    image_size: int = DEFAULT_IMAGE_SIZE,
    min_class_count: int = DEFAULT_MIN_CLASS_COUNT,
) -> dict[str, tf.Tensor]:
    """TFT preprocessing: decode + resize, full-pass per-channel normalisation, label vocabularies."""
    encoded = tf.reshape(inputs[IMAGE_KEY], [-1])
    pixels = decode_images(encoded, image_size)
    # Every image has S*S pixels, so the mean of per-image channel means is the dataset's channel
    # mean, and likewise for E[x^2]: exact full-pass statistics from two [N, 3] analyzers.
    per_image_mean = tf.reduce_mean(pixels, axis=[1, 2])
    per_image_sq = tf.reduce_mean(tf.square(pixels), axis=[1, 2])
    mean = tft.mean(per_image_mean, reduce_instance_dims=False)  # [3]
    mean_sq = tft.mean(per_image_sq, reduce_instance_dims=False)  # [3]
    std = tf.sqrt(tf.maximum(mean_sq - tf.square(mean), _STD_FLOOR**2))
    outputs: dict[str, tf.Tensor] = {
        IMAGE_KEY: (pixels - mean) / std,
        IMAGE_PNG_KEY: tf.identity(encoded),
        LISTING_ID_KEY: tf.identity(tf.reshape(inputs[LISTING_ID_KEY], [-1])),
        KIND_KEY: tf.identity(tf.reshape(inputs[KIND_KEY], [-1])),
    }
    for label in LABEL_KEYS:
        value = tf.reshape(inputs[label], [-1])
        present = tf.not_equal(value, "")
        # Missing labels get weight 0 so they never reach the vocabulary (nor count towards a
        # class's frequency); their index is then overwritten with MISSING_LABEL.
        index = tft.compute_and_apply_vocabulary(
            value,
            frequency_threshold=min_class_count,
            num_oov_buckets=1,
            weights=tf.cast(present, tf.float32),
            vocab_filename=vocab_name(label),
            name=f"vocab_{label}",
        )
        outputs[label] = tf.where(present, index, tf.constant(MISSING_LABEL, tf.int64))
    return outputs


def make_preprocessing_fn(
    image_size: int = DEFAULT_IMAGE_SIZE, min_class_count: int = DEFAULT_MIN_CLASS_COUNT
) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
    """``preprocessing_fn`` with its settings bound (what the Beam pipeline hands to TFT)."""
    return functools.partial(
        preprocessing_fn, image_size=image_size, min_class_count=min_class_count
    )
