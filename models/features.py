"""Feature keys, the in-graph image rule and the TF Transform ``preprocessing_fn`` (one place).

Raw features (one row per image, listing photos and review photos alike):
  ``image``      uint8 pixels [S, S, 3] of the sanitised, letterboxed image
                 (``core.images.decode_image``), carried as int64 (tf.Example has no uint8).
  ``listing_id``, ``kind`` ("listing" | "review")  passed through for the retrieval evaluation.
  ``category``, ``color``, ``shape``, ``material``  labels, ``""`` when missing.

Transformed features (what the TFRecords hold; each image is stored once, as its pixels):
  ``image``        the same uint8 pixels [S, S, 3] (int64 values 0..255).
  ``image_mean``, ``image_std``  float32 [3]: the full-pass per-channel statistics of the train
                 split (the same 6 numbers on every row). ``normalize_pixels`` turns pixels into the
                 network's input with them, in the training input pipeline and in the serving graph.
  ``<label>``    int64 class index; ``-1`` when missing (its loss is masked); rare classes fold into
                 the OOV bucket (index = vocabulary size), a real "other" class.

Encoded bytes (a query, TF Serving, any external caller) go through ``decode_letterboxed``, the
TensorFlow twin of the Pillow rule in ``core.images``: same letterbox (longer side to S,
aspect kept, white padding centred), same JPEG DCT-domain downscale (``draft``), same bicubic
resampling, alpha composited on white. EXIF orientation and ICC colour profiles are applied by the
Pillow path only: callers with such photos should decode them safely and use the pixel signature.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tensorflow as tf
import tensorflow_transform as tft

from core.images import PAD_COLOR

IMAGE_KEY = "image"
IMAGE_MEAN_KEY = "image_mean"
IMAGE_STD_KEY = "image_std"
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
_PAD = float(PAD_COLOR[0])  # white, the Pillow letterbox's padding


def raw_feature_spec(image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, tf.io.FixedLenFeature]:
    spec = {
        k: tf.io.FixedLenFeature([], tf.string) for k in (LISTING_ID_KEY, KIND_KEY, *LABEL_KEYS)
    }
    spec[IMAGE_KEY] = tf.io.FixedLenFeature([image_size, image_size, 3], tf.int64)
    return spec


def vocab_name(label: str) -> str:
    """The vocabulary file name TFT writes for a label (read back via TFTransformOutput)."""
    return f"vocab_{label}"


def _jpeg_scale(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
    """Pillow's ``draft`` rule: the largest of 8, 4, 2, 1 with both sides still >= ``size``."""
    scale = tf.minimum(height // size, width // size)
    return tf.case(
        [(scale >= 8, lambda: 8), (scale >= 4, lambda: 4), (scale >= 2, lambda: 2)],
        default=lambda: 1,
    )


def _decode_rgb(data: tf.Tensor, size: int) -> tf.Tensor:
    """One encoded image -> float32 [H, W, 3] in 0..255, alpha composited on white."""
    if_jpeg = tf.io.is_jpeg(data)

    def jpeg() -> tf.Tensor:
        shape = tf.io.extract_jpeg_shape(data)
        scale = _jpeg_scale(shape[0], shape[1], size)
        # ``ratio`` is an attribute, not a tensor: one branch per libjpeg scale, as Pillow's draft.
        branches = {
            r: functools.partial(tf.io.decode_jpeg, data, channels=3, ratio=r) for r in (1, 2, 4, 8)
        }
        return tf.case([(tf.equal(scale, r), branches[r]) for r in (8, 4, 2)], default=branches[1])

    def png() -> tf.Tensor:
        rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
        alpha = rgba[..., 3:] / 255.0
        return tf.cast(tf.round(rgba[..., :3] * alpha + _PAD * (1.0 - alpha)), tf.uint8)

    def other() -> tf.Tensor:  # GIF (first frame), BMP
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    is_png = tf.equal(tf.strings.substr(data, 0, 4), b"\x89PNG")
    img = tf.case([(if_jpeg, jpeg), (is_png, png)], default=other)
    img.set_shape([None, None, 3])
    return tf.cast(img, tf.float32)


def letterbox(img: tf.Tensor, size: int) -> tf.Tensor:
    """float32 [H, W, 3] in 0..255 -> uint8 [S, S, 3]: the rule of ``images._letterbox``."""
    shape = tf.shape(img)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    scale = size / tf.maximum(h, w)
    # Python's round() is half-to-even, and so is tf.round.
    new_h = tf.cast(tf.clip_by_value(tf.round(h * scale), 1, size), tf.int32)
    new_w = tf.cast(tf.clip_by_value(tf.round(w * scale), 1, size), tf.int32)
    resized = tf.cond(
        tf.logical_and(tf.equal(new_h, shape[0]), tf.equal(new_w, shape[1])),
        lambda: img,
        lambda: tf.image.resize(img, tf.stack([new_h, new_w]), method="bicubic", antialias=True),
    )
    resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    # Pad with white: shift so that white is 0, pad with zeros, shift back.
    padded = tf.pad(
        resized - _PAD, [[top, size - new_h - top], [left, size - new_w - left], [0, 0]]
    )
    return tf.cast(padded + _PAD, tf.uint8)


def decode_letterboxed(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Batch of encoded bytes (JPEG, PNG, GIF, BMP) -> uint8 [N, S, S, 3], as the pipelines decode."""
    return tf.map_fn(
        lambda data: letterbox(_decode_rgb(data, image_size), image_size),
        encoded,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        parallel_iterations=8,
    )


def normalize_pixels(pixels: tf.Tensor, mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    """uint8/int64 pixels [N, S, S, 3] -> the network's float32 input, with TFT's statistics."""
    x = tf.cast(pixels, tf.float32) / 255.0
    return (x - tf.reshape(mean, [-1, 1, 1, 3])) / tf.reshape(std, [-1, 1, 1, 3])


def preprocessing_fn(
    inputs: dict[str, tf.Tensor],
    image_size: int = DEFAULT_IMAGE_SIZE,
    min_class_count: int = DEFAULT_MIN_CLASS_COUNT,
) -> dict[str, tf.Tensor]:
    """TFT preprocessing: full-pass per-channel pixel statistics, label vocabularies.

    The pixels pass through unchanged (stored once); the statistics ride along on every row so
    that training and serving normalise with ``normalize_pixels`` and the same numbers.
    """
    raw = tf.reshape(inputs[IMAGE_KEY], [-1, image_size, image_size, 3])
    pixels = tf.cast(raw, tf.float32) / 255.0
    # Every image has S*S pixels, so the mean of per-image channel means is the dataset's channel
    # mean, and likewise for E[x^2]: exact full-pass statistics from two [N, 3] analyzers.
    per_image_mean = tf.reduce_mean(pixels, axis=[1, 2])
    per_image_sq = tf.reduce_mean(tf.square(pixels), axis=[1, 2])
    mean = tft.mean(per_image_mean, reduce_instance_dims=False)  # [3]
    mean_sq = tft.mean(per_image_sq, reduce_instance_dims=False)  # [3]
    std = tf.sqrt(tf.maximum(mean_sq - tf.square(mean), _STD_FLOOR**2))
    ones = tf.ones_like(per_image_mean)  # [N, 3]: the statistics on every row
    outputs: dict[str, tf.Tensor] = {
        IMAGE_KEY: tf.identity(raw),
        IMAGE_MEAN_KEY: ones * mean,
        IMAGE_STD_KEY: ones * std,
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
