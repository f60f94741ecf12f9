"""Buyer-like views of studio photos: the item small and off-centre on clutter, in 4:3 frames."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.augment import ITEM_SCALE, phone_views, studio_mask

WHITE = 1.5  # the letterbox padding in normalised units (these tests' own choice)


def _studio_batch(n: int = 32, size: int = 64) -> np.ndarray:
    """A red square on light grey paper, letterboxed 4:3 with white bars top and bottom."""
    x = np.full((n, size, size, 3), 1.0, np.float32)  # the paper
    x[:, : size // 8] = WHITE
    x[:, -size // 8 :] = WHITE
    x[:, 20:44, 20:44] = (1.5, -1.5, -1.5)  # the item: 24 px, 0.375 of the side
    return x


def _red(x: np.ndarray) -> np.ndarray:
    return (x[..., 0] > 0.8) & (x[..., 1] < -0.8) & (x[..., 2] < -0.8)


def test_the_mask_cuts_the_item_not_the_paper_nor_the_letterbox_bars() -> None:
    x = _studio_batch(2)
    white = tf.fill([2, 1, 1, 3], WHITE)
    mask = studio_mask(tf.constant(x), white).numpy()[..., 0]
    item = np.zeros(x.shape[:3], bool)
    item[:, 20:44, 20:44] = True
    assert mask[item].min() > 0.9 and mask[~item].max() < 0.1


def test_phone_views_put_the_item_small_and_anywhere_beside_clutter() -> None:
    tf.random.set_seed(3)
    x = _studio_batch()
    out = phone_views(tf.constant(x), tf.fill([len(x), 1, 1, 3], WHITE)).numpy()
    red = _red(out)
    side = np.sqrt(red.sum(axis=(1, 2))) / out.shape[1]  # the square item's side in the view
    # (a rolled copy of another item is in the frame too, smaller: it is red here as well)
    assert np.all(side > ITEM_SCALE[0] * 0.375 * 0.8) and np.all(side < 0.375 * 1.05 + 0.25)
    assert np.median(side) < 0.375  # smaller than in the studio photo
    centres = np.array([np.argwhere(r).mean(axis=0) for r in red])
    assert centres.std(axis=0).min() > 4  # not always in the middle
    # The paper is gone: no view keeps the studio's uniform light background around the item.
    paper = np.all(np.abs(out - 1.0) < 0.05, axis=-1)
    assert paper.mean() < 0.05
    # Some views are 4:3 frames with white bars, as the letterbox rule pads a phone photo.
    bars = np.all(out[:, :2] == WHITE, axis=(1, 2, 3)) | np.all(
        out[:, :, :2] == WHITE, axis=(1, 2, 3)
    )
    assert 0 < bars.sum() < len(out)


def test_only_listing_photos_become_phone_views_at_the_rate_asked(monkeypatch) -> None:
    import models.augment as aug

    # Mark phone views: a view that went through phone_views is far brighter than any other.
    monkeypatch.setattr(aug, "phone_views", lambda images, white: tf.fill(tf.shape(images), 100.0))
    x = tf.constant(_studio_batch(64))
    white = tf.fill([64, 1, 1, 3], WHITE)
    is_listing = tf.constant([True, False] * 32)
    marked = lambda v: v.mean(axis=(1, 2, 3)) > 20  # noqa: E731
    tf.random.set_seed(1)
    views = marked(aug.augment(x, is_listing, white=white, phone_rate=0.5).numpy())
    assert not views[1::2].any()  # review photos are already buyer photos
    assert 0.25 < views[::2].mean() < 0.75
    assert not marked(aug.augment(x, is_listing, white=white, phone_rate=0.0).numpy()).any()
    assert not marked(aug.augment(x, is_listing).numpy()).any()  # no white: the old behaviour


def test_buyer_photos_are_cut_to_the_localisers_box_and_listing_photos_are_not() -> None:
    from models.dataset import _review_crops
    from models.localiser import build_localiser

    rng = np.random.default_rng(0)
    pixels = tf.constant(rng.integers(0, 256, (8, 64, 64, 3)), tf.int64)
    is_listing = tf.constant([True, False] * 4)
    out = _review_crops(pixels, is_listing, build_localiser(64), rate=1.0).numpy()
    assert out.shape == (8, 64, 64, 3) and out.dtype == np.int64
    same = [np.array_equal(out[i], pixels.numpy()[i]) for i in range(8)]
    assert same[::2] == [True] * 4  # studio photos stay whole
    assert not any(same[1::2])  # every buyer photo became a crop
    assert np.array_equal(_review_crops(pixels, is_listing, build_localiser(64), 0.0), pixels)
