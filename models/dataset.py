"""Transformed TFRecords (the preprocess stage's output) -> tf.data pipelines for training and evaluation.

The records hold each image once, as uint8 pixels; ``_network_input`` normalises them in the
input pipeline with TFT's statistics (``features.normalize_pixels``, as the serving graph does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from core import paths, storage
from models.augment import PHONE_VIEW_RATE, augment
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


def _review_crops(
    pixels: tf.Tensor, is_listing: tf.Tensor, localiser: keras.Model, rate: float
) -> tf.Tensor:
    """A share of the buyer photos cut to the localiser's best box, as queries are."""
    from models.localiser import crop_boxes, propose_boxes

    frames = tf.cast(pixels, tf.uint8)
    boxes, _ = propose_boxes(localiser, frames, k=1, size=int(localiser.input_shape[1]))
    crops = tf.cast(crop_boxes(frames, boxes, int(pixels.shape[1])), pixels.dtype)
    take = tf.logical_and(~is_listing, tf.random.uniform(tf.shape(is_listing)) < rate)
    return tf.where(take[:, None, None, None], crops, pixels)


def train_dataset(
    files: list[str],
    tft_output: tft.TFTransformOutput,
    listing_ids: list[str],
    heads: tuple[str, ...],
    batch_size: int,
    do_augment: bool,
    seed: int,
    phone_rate: float = PHONE_VIEW_RATE,
    localiser: keras.Model | None = None,
    review_crop_rate: float = 0.0,
) -> tf.data.Dataset:
    """(image, {head: label}) batches, shuffled, repeated; the instance label is the listing's index.

    With ``localiser``, a ``review_crop_rate`` share of the buyer photos is replaced by the
    localiser's crop of the item: the view a query is embedded as, tied to its own listing.
    """
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
        if localiser is not None and review_crop_rate > 0:
            b = {
                **b,
                IMAGE_KEY: _review_crops(b[IMAGE_KEY], is_listing, localiser, review_crop_rate),
            }
        x = _network_input(b)
        if do_augment:
            # The letterbox padding (white) in the network's units, for the 4:3 phone frames.
            mean, std = b[IMAGE_MEAN_KEY][:, None, None, :], b[IMAGE_STD_KEY][:, None, None, :]
            x = augment(x, is_listing, white=(1.0 - mean) / std, phone_rate=phone_rate)
        return x, y

    return ds.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


# The whole-catalog gallery is bounded: at marketplace scale the retrieval test samples the
# training listings' photos (the distractors a shopper's photo meets) instead of embedding them all.
MAX_GALLERY_IMAGES = 50_000
# Training buyer photos searched too (``train_review_recall_*``): a model that cannot match the
# buyer photos it trained on cannot match new ones; a few hundred tell the two apart.
MAX_TRAIN_QUERIES = 500


@dataclass(frozen=True)
class EvalSet:
    """The retrieval test's images, metadata in memory, pixels streamed through the model on demand.

    In order: every image of the eval split (held-out listings: their listing photos and their
    review photos, the queries), then from the train split up to ``MAX_GALLERY_IMAGES`` listing
    photos, which join the gallery so that a query is searched against the whole catalog, as a
    shopper's photo is (``models/retrieval_metrics.py``), and up to ``MAX_TRAIN_QUERIES`` review
    photos (queries of the training-set figure, never gallery items).
    """

    files: tuple[str, ...]  # eval split
    gallery_files: tuple[str, ...]  # train split
    listing_ids: np.ndarray  # str, one per image
    is_review: np.ndarray  # bool
    held_out: np.ndarray  # bool: the image's listing is in the eval split
    labels: dict[str, np.ndarray]  # int64, -1 = missing
    gallery_size: int  # training listing photos included
    # Which rows of gallery_files, in file order, were taken (the rows after the last are not).
    gallery_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.listing_ids)


_META = (LISTING_ID_KEY, KIND_KEY, *LABEL_KEYS)


def _read_meta(
    files: list[str], tft_output: tft.TFTransformOutput, max_listing: int, max_review: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Metadata of the first ``max_listing`` listing photos and ``max_review`` review photos, and
    the per-row mask of what was taken (rows in file order, up to the last one read)."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _META}
    taken: list[np.ndarray] = []
    left = {False: max_listing, True: max_review}
    for batch in _parsed(files, _spec(tft_output, _META), 512):
        review = batch[KIND_KEY].numpy().reshape(-1) == KIND_REVIEW.encode()
        keep = np.zeros(len(review), bool)
        for kind in (False, True):
            rows = np.flatnonzero(review == kind)[: left[kind]]
            keep[rows] = True
            left[kind] -= len(rows)
        taken.append(keep)
        for k in _META:
            cols[k].append(batch[k].numpy().reshape(-1)[keep])
        if left[False] <= 0 and left[True] <= 0:
            break
    meta = {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}
    return meta, np.concatenate(taken) if taken else np.zeros(0, bool)


def load_eval_set(
    files: list[str],
    tft_output: tft.TFTransformOutput,
    gallery_files: list[str] = (),  # type: ignore[assignment]
    max_gallery: int = MAX_GALLERY_IMAGES,
    max_train_queries: int = MAX_TRAIN_QUERIES,
) -> EvalSet:
    held, _ = _read_meta(list(files), tft_output, 1 << 62, 1 << 62)
    gal, rows = (
        _read_meta(list(gallery_files), tft_output, max_gallery, max_train_queries)
        if gallery_files
        else (None, np.zeros(0, bool))
    )
    arr = {k: np.concatenate([held[k], gal[k]]) if gal else held[k] for k in _META}
    n_held = len(held[LISTING_ID_KEY])
    is_review = np.array([b.decode() == KIND_REVIEW for b in arr[KIND_KEY]], bool)
    return EvalSet(
        files=tuple(files),
        gallery_files=tuple(gallery_files),
        listing_ids=np.array([b.decode() for b in arr[LISTING_ID_KEY]]),
        is_review=is_review,
        held_out=np.arange(len(arr[LISTING_ID_KEY])) < n_held,
        labels={k: arr[k].astype(np.int64) for k in LABEL_KEYS},
        gallery_size=int(np.sum(~is_review[n_held:])),
        gallery_rows=rows,
    )


def _stream(
    eval_set: EvalSet, tft_output: tft.TFTransformOutput, keys: tuple[str, ...], batch_size: int
) -> Iterator[dict[str, tf.Tensor]]:
    """Batches of ``keys`` in the EvalSet's order: the eval split, then the rows taken from the
    train split (``gallery_rows``)."""
    yield from _parsed(list(eval_set.files), _spec(tft_output, keys), batch_size)
    rows, start = eval_set.gallery_rows, 0
    if not rows.any():
        return
    for batch in _parsed(list(eval_set.gallery_files), _spec(tft_output, keys), batch_size):
        n = int(batch[keys[0]].shape[0])
        keep = rows[start : start + n]
        keep = np.concatenate([keep, np.zeros(n - len(keep), bool)])
        start += n
        if keep.any():
            yield {k: tf.boolean_mask(batch[k], keep) for k in keys}
        if start >= len(rows):
            return


def listing_pixels(files: list[str], tft_output: tft.TFTransformOutput, limit: int) -> np.ndarray:
    """Up to ``limit`` listing (studio) photos of the split as uint8 [M, S, S, 3]: the items the
    query localiser learns from (``models/localiser.py``)."""
    out: list[np.ndarray] = []
    n = 0
    for batch in _parsed(files, _spec(tft_output, (IMAGE_KEY, KIND_KEY)), 512):
        keep = batch[KIND_KEY].numpy().reshape(-1) != KIND_REVIEW.encode()
        px = batch[IMAGE_KEY].numpy()[keep][: limit - n].astype(np.uint8)
        out.append(px)
        n += len(px)
        if n >= limit:
            break
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 3), np.uint8)


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
