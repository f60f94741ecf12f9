"""Transformed TFRecords (the preprocess stage's output) -> tf.data pipelines for training and evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models.config import INSTANCE_HEAD
from models.features import IMAGE_KEY, IMAGE_PNG_KEY, KIND_KEY, KIND_REVIEW, LABEL_KEYS, LISTING_ID_KEY
from vsearch import paths, storage

TRAIN = "train"
EVAL = "eval"


def split_files(workdir: str, date: str, split: str) -> list[str]:
    files = sorted(storage.glob(storage.join(paths.transformed_dir(workdir, date), f"{split}-*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(f"no {split} TFRecords under {paths.transformed_dir(workdir, date)}: run `vsearch preprocess` first")
    return files


def _parsed(files: list[str], spec: dict[str, tf.io.FixedLenFeature], batch_size: int) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(4, len(files)))
    return ds.batch(batch_size).map(lambda r: tf.io.parse_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE)


def _spec(tft_output: tft.TFTransformOutput, keys: tuple[str, ...]) -> dict[str, tf.io.FixedLenFeature]:
    full = tft_output.transformed_feature_spec()
    return {k: full[k] for k in keys}


def scan_train(files: list[str], tft_output: tft.TFTransformOutput) -> tuple[list[str], int]:
    """(sorted distinct listing ids, number of images) of the train split, in one pass.

    The listing ids are the classes of the instance head.
    """
    ids: set[bytes] = set()
    count = 0
    for batch in _parsed(files, _spec(tft_output, (LISTING_ID_KEY,)), 1024):
        values = batch[LISTING_ID_KEY].numpy().ravel().tolist()
        ids.update(values)
        count += len(values)
    return sorted(i.decode() for i in ids), count


def augment(images: tf.Tensor) -> tf.Tensor:
    """Make listing photos look like buyer photos: off-centre crop/zoom, flip, light, blur, noise.

    Works on normalised images (mean 0, std 1 per channel), batch-wise for speed.
    """
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    g = tf.random  # op-level randomness under the global seed that train.py sets
    scale = g.uniform([n, 1], 0.65, 1.0)
    cy = g.uniform([n, 1], 0.0, 1.0) * (1.0 - scale)
    cx = g.uniform([n, 1], 0.0, 1.0) * (1.0 - scale)
    boxes = tf.concat([cy, cx, cy + scale, cx + scale], axis=1)
    flip = g.uniform([n, 1]) < 0.5
    boxes = tf.where(flip, tf.stack([boxes[:, 0], boxes[:, 3], boxes[:, 2], boxes[:, 1]], axis=1), boxes)
    out = tf.image.crop_and_resize(images, boxes, tf.range(n), size)
    # Lighting: per-image gain and offset per channel (white balance), and contrast.
    gain = g.uniform([n, 1, 1, 3], 0.85, 1.15) * g.uniform([n, 1, 1, 1], 0.8, 1.2)
    offset = g.normal([n, 1, 1, 3], 0.0, 0.1) + g.normal([n, 1, 1, 1], 0.0, 0.2)
    out = out * gain + offset
    # Blur half of the batch (phone focus), then sensor noise.
    blurred = tf.nn.avg_pool2d(out, 3, 1, "SAME")
    out = tf.where(g.uniform([n, 1, 1, 1]) < 0.5, blurred, out)
    return out + g.normal(tf.shape(out), 0.0, 0.05)


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
        tf.lookup.KeyValueTensorInitializer(tf.constant(listing_ids), tf.range(len(listing_ids), dtype=tf.int64)),
        default_value=-1,
    )
    label_keys = tuple(h for h in heads if h in LABEL_KEYS)
    spec = _spec(tft_output, (IMAGE_KEY, LISTING_ID_KEY, *label_keys))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(4, len(files)))
    ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).map(lambda r: tf.io.parse_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE)

    def to_xy(b: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        y = {k: tf.reshape(b[k], [-1]) for k in label_keys}
        if INSTANCE_HEAD in heads:
            y[INSTANCE_HEAD] = table.lookup(tf.reshape(b[LISTING_ID_KEY], [-1]))
        x = augment(b[IMAGE_KEY]) if do_augment else b[IMAGE_KEY]
        return x, y

    return ds.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


@dataclass(frozen=True)
class EvalSet:
    """The eval split's metadata in memory; images are streamed through the model on demand."""

    files: tuple[str, ...]
    listing_ids: np.ndarray  # str, one per image
    is_review: np.ndarray  # bool
    labels: dict[str, np.ndarray]  # int64, -1 = missing
    pngs: np.ndarray | None = None  # raw bytes (object), for re-embedding with a serving signature

    def __len__(self) -> int:
        return len(self.listing_ids)


def load_eval_set(files: list[str], tft_output: tft.TFTransformOutput, with_png: bool = False) -> EvalSet:
    keys = (LISTING_ID_KEY, KIND_KEY, *LABEL_KEYS) + ((IMAGE_PNG_KEY,) if with_png else ())
    cols: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in _parsed(files, _spec(tft_output, keys), 512):
        for k in keys:
            cols[k].append(batch[k].numpy().reshape(-1))
    arr = {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}
    return EvalSet(
        files=tuple(files),
        listing_ids=np.array([b.decode() for b in arr[LISTING_ID_KEY]]),
        is_review=np.array([b.decode() == KIND_REVIEW for b in arr[KIND_KEY]], bool),
        labels={k: arr[k].astype(np.int64) for k in LABEL_KEYS},
        pngs=arr[IMAGE_PNG_KEY] if with_png else None,
    )


def eval_images(eval_set: EvalSet, tft_output: tft.TFTransformOutput, batch_size: int = 256) -> Iterator[tf.Tensor]:
    """Transformed image batches in the same order as the EvalSet's metadata."""
    for batch in _parsed(list(eval_set.files), _spec(tft_output, (IMAGE_KEY,)), batch_size):
        yield batch[IMAGE_KEY]
