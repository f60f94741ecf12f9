"""Transformed TFRecords (the preprocess stage's output) -> tf.data pipelines for training and evaluation.

The records hold each image once, as uint8 pixels; ``_network_input`` normalises them in the
input pipeline with TFT's statistics (``features.normalize_pixels``, as the serving graph does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models.config import INSTANCE_HEAD
from models.features import (
    IMAGE_KEY,
    IMAGE_MEAN_KEY,
    IMAGE_STD_KEY,
    KIND_KEY,
    KIND_REVIEW,
    LABEL_KEYS,
    LISTING_ID_KEY,
    normalize_pixels,
)
from vsearch.core import paths, storage

TRAIN = "train"
EVAL = "eval"


def split_files(workdir: str, date: str, split: str) -> list[str]:
    files = sorted(
        storage.glob(storage.join(paths.transformed_dir(workdir, date), f"{split}-*.tfrecord.gz"))
    )
    if not files:
        raise FileNotFoundError(
            f"no {split} TFRecords under {paths.transformed_dir(workdir, date)}: run `vsearch preprocess` first"
        )
    return files


def _parsed(
    files: list[str], spec: dict[str, tf.io.FixedLenFeature], batch_size: int
) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(
        files, compression_type="GZIP", num_parallel_reads=min(4, len(files))
    )
    return ds.batch(batch_size).map(
        lambda r: tf.io.parse_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE
    )


def _spec(
    tft_output: tft.TFTransformOutput, keys: tuple[str, ...]
) -> dict[str, tf.io.FixedLenFeature]:
    full = tft_output.transformed_feature_spec()
    return {k: full[k] for k in keys}


_IMAGE_KEYS = (IMAGE_KEY, IMAGE_MEAN_KEY, IMAGE_STD_KEY)


def _network_input(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    return normalize_pixels(batch[IMAGE_KEY], batch[IMAGE_MEAN_KEY], batch[IMAGE_STD_KEY])


def scan_train(
    files: list[str], tft_output: tft.TFTransformOutput
) -> tuple[list[str], set[str], int]:
    """(sorted distinct listing ids, the ids with review photos, number of images) of the train
    split, in one pass: the candidates for the instance head's classes (models/instances.py)."""
    ids: set[bytes] = set()
    reviewed: set[bytes] = set()
    count = 0
    for batch in _parsed(files, _spec(tft_output, (LISTING_ID_KEY, KIND_KEY)), 1024):
        values = batch[LISTING_ID_KEY].numpy().ravel()
        kinds = batch[KIND_KEY].numpy().ravel()
        ids.update(values.tolist())
        reviewed.update(values[kinds == KIND_REVIEW.encode()].tolist())
        count += len(values)
    return sorted(i.decode() for i in ids), {i.decode() for i in reviewed}, count


def _random_backgrounds(n: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Busy, coloured backgrounds (normalised units): a two-colour gradient plus blotchy clutter."""
    h, w = size[0], size[1]
    yy, xx = tf.meshgrid(tf.linspace(0.0, 1.0, h), tf.linspace(0.0, 1.0, w), indexing="ij")
    direction = tf.random.uniform([n, 1, 1, 2], -1.0, 1.0)
    t = xx[None, :, :, None] * direction[..., :1] + yy[None, :, :, None] * direction[..., 1:]
    t = (t - tf.reduce_min(t, axis=[1, 2], keepdims=True)) / (
        tf.reduce_max(t, axis=[1, 2], keepdims=True)
        - tf.reduce_min(t, axis=[1, 2], keepdims=True)
        + 1e-6
    )
    c0 = tf.random.normal([n, 1, 1, 3], 0.0, 1.0)
    c1 = tf.random.normal([n, 1, 1, 3], 0.0, 1.0)
    clutter = tf.image.resize(tf.random.normal([n, 5, 5, 3], 0.0, 0.6), size, method="bicubic")
    return c0 * (1.0 - t) + c1 * t + clutter


def _geometry(images: tf.Tensor, n: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Per-image rotation (+-25 deg), zoom (0.6..1.15: review products are often small), shift."""
    hw = tf.cast(size, tf.float32)
    cy, cx = hw[0] / 2.0, hw[1] / 2.0
    angle = tf.random.uniform([n], -0.44, 0.44)
    zoom = tf.random.uniform([n], 0.6, 1.15)
    ty = tf.random.uniform([n], -0.15, 0.15) * hw[0]
    tx = tf.random.uniform([n], -0.15, 0.15) * hw[1]
    a0, a1 = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    b0, b1 = -tf.sin(angle) / zoom, tf.cos(angle) / zoom
    # Output pixel (x, y) samples input a0*x + a1*y + a2, b0*x + b1*y + b2 (rotate/zoom about the centre).
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros([n])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=size,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def augment(images: tf.Tensor, is_listing: tf.Tensor) -> tf.Tensor:
    """Make studio listing photos look like buyer photos: pose, scale, background, light, blur, noise.

    Works batch-wise on normalised images (mean 0, std 1 per channel); ``is_listing`` [N] bool marks
    studio photos, whose near-uniform background is swapped for a busy one most of the time.
    """
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    flip = tf.random.uniform([n, 1, 1, 1]) < 0.5
    out = tf.where(flip, tf.reverse(images, axis=[2]), images)
    out = _geometry(out, n, size)
    # Background: pixels close to the corner colour of a studio shot are background.
    corners = tf.stack([out[:, 0, 0], out[:, 0, -1], out[:, -1, 0], out[:, -1, -1]], axis=1)
    bg_colour = tf.reduce_mean(corners, axis=1)[:, None, None, :]
    distance = tf.norm(out - bg_colour, axis=-1, keepdims=True)
    mask = tf.sigmoid((0.5 - distance) * 12.0)
    swap = tf.logical_and(is_listing[:, None, None, None], tf.random.uniform([n, 1, 1, 1]) < 0.7)
    out = tf.where(swap, out * (1.0 - mask) + _random_backgrounds(n, size) * mask, out)
    # Lighting: per-image gain and offset per channel (white balance), and exposure.
    gain = tf.random.uniform([n, 1, 1, 3], 0.85, 1.15) * tf.random.uniform([n, 1, 1, 1], 0.75, 1.2)
    offset = tf.random.normal([n, 1, 1, 3], 0.0, 0.1) + tf.random.normal([n, 1, 1, 1], 0.0, 0.2)
    out = out * gain + offset
    # Phone optics: blur half of the batch, then sensor noise.
    blurred = tf.nn.avg_pool2d(out, 3, 1, "SAME")
    out = tf.where(tf.random.uniform([n, 1, 1, 1]) < 0.5, blurred, out)
    return out + tf.random.normal(tf.shape(out), 0.0, 0.05)


def train_dataset(
    files: list[str],
    tft_output: tft.TFTransformOutput,
    listing_ids: list[str],
    heads: tuple[str, ...],
    batch_size: int,
    do_augment: bool,
    seed: int,
) -> tf.data.Dataset:
    """(image, {head: label}) batches, shuffled, repeated; the instance label is the listing's index."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(listing_ids), tf.range(len(listing_ids), dtype=tf.int64)
        ),
        default_value=-1,
    )
    label_keys = tuple(h for h in heads if h in LABEL_KEYS)
    spec = _spec(tft_output, (*_IMAGE_KEYS, LISTING_ID_KEY, KIND_KEY, *label_keys))
    ds = tf.data.TFRecordDataset(
        files, compression_type="GZIP", num_parallel_reads=min(4, len(files))
    )
    ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).map(
        lambda r: tf.io.parse_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE
    )

    def to_xy(b: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        y = {k: tf.reshape(b[k], [-1]) for k in label_keys}
        if INSTANCE_HEAD in heads:
            y[INSTANCE_HEAD] = table.lookup(tf.reshape(b[LISTING_ID_KEY], [-1]))
        is_listing = tf.not_equal(tf.reshape(b[KIND_KEY], [-1]), KIND_REVIEW)
        x = _network_input(b)
        x = augment(x, is_listing) if do_augment else x
        return x, y

    return ds.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


# The whole-catalog gallery is bounded: at marketplace scale the retrieval test samples the
# training listings' photos (the distractors a shopper's photo meets) instead of embedding them all.
MAX_GALLERY_IMAGES = 50_000


@dataclass(frozen=True)
class EvalSet:
    """The retrieval test's images, metadata in memory, pixels streamed through the model on demand.

    In order: every image of the eval split (held-out listings: their listing photos and their
    review photos, the queries), then up to ``MAX_GALLERY_IMAGES`` listing photos of training
    listings, which join the gallery so that a query is searched against the whole catalog, as a
    shopper's photo is (``models/retrieval_metrics.py``).
    """

    files: tuple[str, ...]  # eval split
    gallery_files: tuple[str, ...]  # train split (listing photos only are used)
    listing_ids: np.ndarray  # str, one per image
    is_review: np.ndarray  # bool
    held_out: np.ndarray  # bool: the image's listing is in the eval split
    labels: dict[str, np.ndarray]  # int64, -1 = missing
    gallery_size: int  # training listing photos included (the first ones of gallery_files)

    def __len__(self) -> int:
        return len(self.listing_ids)


_META = (LISTING_ID_KEY, KIND_KEY, *LABEL_KEYS)


def _read_meta(
    files: list[str], tft_output: tft.TFTransformOutput, listing_photos_only: bool, limit: int
) -> dict[str, np.ndarray]:
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _META}
    n = 0
    for batch in _parsed(files, _spec(tft_output, _META), 512):
        keep = np.ones(len(batch[LISTING_ID_KEY].numpy().reshape(-1)), bool)
        if listing_photos_only:
            keep = batch[KIND_KEY].numpy().reshape(-1) != KIND_REVIEW.encode()
        for k in _META:
            cols[k].append(batch[k].numpy().reshape(-1)[keep][: limit - n])
        n += int(min(keep.sum(), limit - n))
        if n >= limit:
            break
    return {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}


def load_eval_set(
    files: list[str],
    tft_output: tft.TFTransformOutput,
    gallery_files: list[str] = (),  # type: ignore[assignment]
    max_gallery: int = MAX_GALLERY_IMAGES,
) -> EvalSet:
    held = _read_meta(list(files), tft_output, False, 1 << 62)
    gal = _read_meta(list(gallery_files), tft_output, True, max_gallery) if gallery_files else None
    arr = {k: np.concatenate([held[k], gal[k]]) if gal else held[k] for k in _META}
    n_held = len(held[LISTING_ID_KEY])
    return EvalSet(
        files=tuple(files),
        gallery_files=tuple(gallery_files),
        listing_ids=np.array([b.decode() for b in arr[LISTING_ID_KEY]]),
        is_review=np.array([b.decode() == KIND_REVIEW for b in arr[KIND_KEY]], bool),
        held_out=np.arange(len(arr[LISTING_ID_KEY])) < n_held,
        labels={k: arr[k].astype(np.int64) for k in LABEL_KEYS},
        gallery_size=len(arr[LISTING_ID_KEY]) - n_held,
    )


def _stream(
    eval_set: EvalSet, tft_output: tft.TFTransformOutput, keys: tuple[str, ...], batch_size: int
) -> Iterator[dict[str, tf.Tensor]]:
    """Batches of ``keys`` in the EvalSet's order: the eval split, then the gallery photos."""
    yield from _parsed(list(eval_set.files), _spec(tft_output, keys), batch_size)
    left = eval_set.gallery_size
    if not left:
        return
    for batch in _parsed(
        list(eval_set.gallery_files), _spec(tft_output, (*keys, KIND_KEY)), batch_size
    ):
        keep = tf.not_equal(tf.reshape(batch[KIND_KEY], [-1]), KIND_REVIEW)
        kept = {k: tf.boolean_mask(batch[k], keep)[:left] for k in keys}
        left -= int(kept[keys[0]].shape[0])
        if kept[keys[0]].shape[0]:
            yield kept
        if left <= 0:
            return


def eval_images(
    eval_set: EvalSet, tft_output: tft.TFTransformOutput, batch_size: int = 256
) -> Iterator[tf.Tensor]:
    """Network-input image batches in the same order as the EvalSet's metadata."""
    for batch in _stream(eval_set, tft_output, _IMAGE_KEYS, batch_size):
        yield _network_input(batch)


def eval_pixels(
    eval_set: EvalSet, tft_output: tft.TFTransformOutput, batch_size: int = 256
) -> Iterator[np.ndarray]:
    """The stored uint8 pixels [N, S, S, 3] in the EvalSet's order (for a serving signature)."""
    for batch in _stream(eval_set, tft_output, (IMAGE_KEY,), batch_size):
        yield batch[IMAGE_KEY].numpy().astype(np.uint8)
