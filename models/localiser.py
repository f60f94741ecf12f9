"""A class-agnostic product localiser: where is the item in a shopper's photo?

Buyer photos show the item small (20-60% of the side), off-centre, among clutter; embedded whole
at 96 px, it is lost. This small fully-convolutional net, CenterNet-style ("Objects as Points",
Zhou et al. 2019), finds it: at stride 8 (a 16x16 grid at 128 px) it predicts a centre heatmap
and, per cell, a box. ``propose_boxes`` turns that into the top-k boxes and ``crop_boxes`` cuts
them out, both in pure TensorFlow, so a SavedModel can embed a query as the frame plus its crops.

It learns from the catalog itself (``models.localiser_data``): studio photos give product masks,
pasted onto clutter they give scenes with known boxes. ``train_localiser`` does it all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import tensorflow as tf

from models.backbones import BN_MOMENTUM
from models.localiser_data import item_masks, synth_scenes

__all__ = [
    "LOCALISER_SIZE",
    "box_iou",
    "build_localiser",
    "crop_boxes",
    "item_masks",
    "propose_boxes",
    "recall_at_iou",
    "synth_scenes",
    "train_localiser",
]

LOCALISER_SIZE = 128  # side of the square (letterboxed) frame the localiser sees
STRIDE = 8  # one heatmap cell per 8x8 pixels: 16x16 cells at 128 px
HEATMAP = "heatmap"  # [N, g, g, 1] logit: is an item's centre in this cell?
BOX = "box"  # [N, g, g, 4]: centre offset in the cell (x, y in 0..1), log width, log height
_LOG_SIDE = (-5.0, 0.5)  # clip on the predicted log side (a fraction of the frame)


# ------------------------------------------------------------------ network


def build_localiser(size: int = LOCALISER_SIZE) -> keras.Model:
    """float32 [N, size, size, 3] in 0..1 -> {HEATMAP: [N, g, g, 1], BOX: [N, g, g, 4]}, g = size/8.

    Stride-2 conv stages down to stride 32 (at 128 px a 4x4 grid that sees the whole frame, so
    a cell knows how far its item extends), then a top-down path adds each coarser stage back
    to the finer one (FPN-style) up to stride 8. ~0.2M parameters, ~30 MMAC at 128 px.
    """
    if size % 32:
        raise ValueError(f"localiser size must be a multiple of 32, got {size}")

    def conv(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
        x = keras.layers.Conv2D(filters, 3, stride, "same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    image = keras.Input((size, size, 3), name="image")
    x = conv(image, 16, 2, "s2")
    x = conv(conv(x, 24, 2, "s4a"), 24, 1, "s4b")
    c8 = conv(conv(x, 48, 2, "s8a"), 48, 1, "s8b")
    c16 = conv(conv(c8, 64, 2, "s16a"), 64, 1, "s16b")
    c32 = conv(c16, 96, 2, "s32")
    x = keras.layers.Conv2D(64, 1, name="top32")(c32)
    x = keras.layers.Add(name="up16")([keras.layers.UpSampling2D(2, name="up16_x2")(x), c16])
    x = conv(x, 48, 1, "td16")
    x = keras.layers.Add(name="up8")([keras.layers.UpSampling2D(2, name="up8_x2")(x), c8])
    x = conv(x, 48, 1, "head")
    # Start every cell at p = 0.1 (CenterNet's prior), so the many empty cells do not swamp
    # the first steps, and every box at a typical size.
    heat = keras.layers.Conv2D(
        1, 1, name=HEATMAP, bias_initializer=keras.initializers.Constant(-2.19)
    )(x)
    box = keras.layers.Conv2D(
        4, 1, name=BOX, bias_initializer=keras.initializers.Constant([0.5, 0.5, -1.0, -1.0])
    )(x)
    return keras.Model(image, {HEATMAP: heat, BOX: box}, name="localiser")


def _targets(boxes: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True boxes [N, 4] -> heatmap [N, g, g, 1] (a Gaussian peaking at exactly 1 in the centre
    cell), box targets [N, g, g, 4] and the centre-cell mask [N, g, g, 1]."""
    n = len(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 * grid, (boxes[:, 1] + boxes[:, 3]) / 2 * grid
    col = np.clip(np.floor(cx), 0, grid - 1).astype(int)
    row = np.clip(np.floor(cy), 0, grid - 1).astype(int)
    # A larger item tolerates a centre a little further off: sigma grows with its size in cells.
    sigma = np.maximum(0.5, np.sqrt(w * h) * grid / 8)[:, None, None]
    cells = np.arange(grid)
    d2 = (cells[None, None, :] - col[:, None, None]) ** 2 + (
        cells[None, :, None] - row[:, None, None]
    ) ** 2
    heat = np.exp(-d2 / (2 * sigma**2)).astype(np.float32)[..., None]
    target = np.zeros((n, grid, grid, 4), np.float32)
    mask = np.zeros((n, grid, grid, 1), np.float32)
    i = np.arange(n)
    target[i, row, col] = np.stack([cx - col, cy - row, np.log(w), np.log(h)], axis=1)
    mask[i, row, col] = 1.0
    return heat, target, mask


def focal_loss(target: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed, per item: cells near a
    centre are penalised less for firing, so a near-miss costs less than a far one."""
    p = tf.sigmoid(logits)
    pos = tf.cast(target > 0.999, tf.float32)
    pos_loss = pos * tf.square(1 - p) * tf.math.log_sigmoid(logits)
    neg_loss = (1 - pos) * (1 - target) ** 4 * tf.square(p) * tf.math.log_sigmoid(-logits)
    return -tf.reduce_sum(pos_loss + neg_loss) / tf.maximum(tf.reduce_sum(pos), 1.0)


def box_loss(target: tf.Tensor, mask: tf.Tensor, pred: tf.Tensor) -> tf.Tensor:
    """L1 on the centre cell's offset and log size, per item."""
    return tf.reduce_sum(mask * tf.abs(pred - target)) / tf.maximum(tf.reduce_sum(mask), 1.0)


# ------------------------------------------------------------------ inference (pure TF)


def _decode(heat: tf.Tensor, box: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Heatmap logits [N, g, g, 1] and box maps [N, g, g, 4] -> top-k boxes [N, k, 4], scores."""
    n, g = tf.shape(heat)[0], tf.shape(heat)[1]
    prob = tf.sigmoid(heat)
    # A cell is a peak if no neighbour beats it (3x3 max-pool NMS): one peak per item.
    peaks = tf.where(prob >= tf.nn.max_pool2d(prob, 3, 1, "SAME"), prob, 0.0)
    scores, index = tf.math.top_k(tf.reshape(peaks, [n, -1]), k)
    reg = tf.gather(tf.reshape(box, [n, -1, 4]), index, batch_dims=1)  # [N, k, 4]
    cells = tf.cast(g, tf.float32)
    cx = (tf.cast(index % g, tf.float32) + reg[..., 0]) / cells
    cy = (tf.cast(index // g, tf.float32) + reg[..., 1]) / cells
    half_w = tf.exp(tf.clip_by_value(reg[..., 2], *_LOG_SIDE)) / 2
    half_h = tf.exp(tf.clip_by_value(reg[..., 3], *_LOG_SIDE)) / 2
    boxes = tf.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
    return tf.clip_by_value(boxes, 0.0, 1.0), scores


def propose_boxes(
    model: keras.Model, pixels: tf.Tensor, k: int = 3, size: int = LOCALISER_SIZE
) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 square frames [N, H, H, 3] (any H) -> the k most likely item boxes float32 [N, k, 4]
    as (x0, y0, x1, y1) frame fractions in [0, 1], best first, and their scores [N, k] (the
    heatmap peak's probability). Pure TensorFlow: usable in a tf.function or SavedModel."""
    x = tf.image.resize(tf.cast(pixels, tf.float32) / 255.0, [size, size], antialias=True)
    out = model(x, training=False)
    return _decode(out[HEATMAP], out[BOX], k)


def crop_boxes(
    pixels: tf.Tensor, boxes: tf.Tensor, out_size: int, margin: float = 0.1
) -> tf.Tensor:
    """uint8 frames [N, H, H, 3] and boxes [N, k, 4] -> uint8 crops [N*k, out_size, out_size, 3],
    frame-major (frame 0's k crops first). Each box is first made square around its centre, side
    = its longer side * (1 + margin), so the item is not distorted; what lies outside the frame
    is white (the letterbox padding, ``core.images.PAD_COLOR``). Bilinear, no
    antialiasing: frames much larger than the crops alias (resize them first)."""
    n, k = tf.shape(boxes)[0], tf.shape(boxes)[1]
    b = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    side = tf.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * (1 + margin)
    # Where each output pixel's centre falls, in frame fractions: [N*k, out_size] per axis.
    t = (tf.range(out_size, dtype=tf.float32) + 0.5) / out_size
    xs = ((b[:, 0] + b[:, 2]) / 2 - side / 2)[:, None] + side[:, None] * t
    ys = ((b[:, 1] + b[:, 3]) / 2 - side / 2)[:, None] + side[:, None] * t
    # crop_and_resize samples from its box's first to last corner in units of (size - 1) between
    # pixel centres, and calls anything beyond the outer pixel centres outside. A one-pixel
    # edge-copy border keeps the frame's outer half pixels inside; the mask below whitens the rest.
    h = tf.cast(tf.shape(pixels)[1], tf.float32)
    padded = tf.pad(tf.cast(pixels, tf.float32), [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC")
    corners = tf.stack([ys[:, 0], xs[:, 0], ys[:, -1], xs[:, -1]], axis=1) * h + 0.5
    crops = tf.image.crop_and_resize(
        padded, corners / (h + 1), tf.repeat(tf.range(n), k), [out_size, out_size], "bilinear"
    )
    outside_y, outside_x = (ys < 0) | (ys > 1), (xs < 0) | (xs > 1)
    outside = outside_y[:, :, None, None] | outside_x[:, None, :, None]
    crops = tf.where(outside, 255.0, crops)
    return tf.cast(tf.clip_by_value(tf.round(crops), 0, 255), tf.uint8)


# ------------------------------------------------------------------ metrics (numpy)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [..., 4] and [..., 4] (x0, y0, x1, y1), broadcast together."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


def recall_at_iou(
    pred: np.ndarray, true: np.ndarray, threshold: float = 0.5, top: int = 1
) -> float:
    """Fraction of frames whose true box [N, 4] overlaps one of the first ``top`` predicted
    boxes [N, k, 4] with IoU >= ``threshold``."""
    if pred.ndim != 3 or true.ndim != 2 or len(pred) != len(true):
        raise ValueError(f"want pred [N, k, 4] and true [N, 4], got {pred.shape}, {true.shape}")
    iou = box_iou(pred[:, :top], true[:, None])
    return float((iou.max(axis=1) >= threshold).mean()) if len(true) else 0.0


# ------------------------------------------------------------------ training

LEARNING_RATE = 6e-3
HELD_OUT = 0.2  # fraction of items whose scenes measure the model (never trained on)
EVAL_SCENES = 512
MIN_AREA, MAX_AREA = 0.02, 0.9  # a mask outside this fraction of the photo is a failed mask


def _item_split(
    items: np.ndarray, seed: int, log: Callable[[str], None]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Masks, drop failed ones, split by item into (train, held-out) (pixels, masks)."""
    masks = item_masks(items)
    area = masks.mean(axis=(1, 2))
    ok = np.nonzero((area >= MIN_AREA) & (area <= MAX_AREA))[0]
    if len(ok) < len(items):
        log(f"localiser: {len(items) - len(ok)} of {len(items)} studio photos gave no usable mask")
    if len(ok) < 2:
        raise ValueError(f"need >= 2 studio photos with a usable product mask, got {len(ok)}")
    order = np.random.default_rng(seed).permutation(ok)
    cut = max(1, round(len(order) * HELD_OUT))
    held, train = order[:cut], order[cut:]
    return (items[train], masks[train]), (items[held], masks[held])


def train_localiser(
    items: np.ndarray,
    *,
    size: int = LOCALISER_SIZE,
    steps: int = 1200,
    batch_size: int = 32,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> tuple[keras.Model, dict[str, float]]:
    """Train a localiser from studio photos ``items`` uint8 [M, S, S, 3]; returns the model and
    its metrics on fresh scenes of held-out items: ``recall_at_iou_0.5@1``, ``@3``,
    ``mean_iou@1`` (top box), the same for the centred box of the median training size
    (``baseline_recall_at_iou_0.5``, ``baseline_mean_iou``), and ``train_seconds``.

    Scenes are synthesised on the fly, one batch ahead in a thread, never repeated; Adam with a
    warm-up and cosine decay. Measured (``python -m benchmarks.localiser_quality``: 400 drawn
    stand-in studio photos, two CPU cores shared with two other trainings): the defaults, 128 px
    and 1200 steps of 32, train in 212 s to recall@IoU0.5 0.82 top-1 / 0.93 top-3, mean IoU
    0.69, where the centred box of median size gets 0.06 (mean IoU 0.21). 1500 steps: 0.85 /
    0.95 in ~250 s.
    """
    say = log or (lambda _: None)
    keras.utils.set_random_seed(seed)
    (train_px, train_masks), (held_px, held_masks) = _item_split(items, seed, say)
    model = build_localiser(size)
    grid = size // STRIDE
    lr = keras.optimizers.schedules.CosineDecay(
        0.0, steps, alpha=0.05, warmup_target=LEARNING_RATE, warmup_steps=max(1, steps // 20)
    )
    optimizer = keras.optimizers.Adam(lr)

    @tf.function
    def train_step(
        x: tf.Tensor, heat: tf.Tensor, box: tf.Tensor, mask: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            heat_loss = focal_loss(heat, out[HEATMAP])
            reg_loss = box_loss(box, mask, out[BOX])
            loss = heat_loss + reg_loss
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return heat_loss, reg_loss

    def batch(step: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([seed, step])
        scenes, boxes = synth_scenes(train_px, train_masks, batch_size, size, rng)
        return (scenes.astype(np.float32) / 255.0, *_targets(boxes, grid), boxes)

    every = max(1, steps // 10)
    seen_boxes: list[np.ndarray] = []
    losses = np.zeros(2)
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:  # synthesis runs while the previous batch trains
        ahead = pool.submit(batch, 0)
        for step in range(steps):
            x, heat, box, mask, boxes = ahead.result()
            if step + 1 < steps:
                ahead = pool.submit(batch, step + 1)
            losses += [float(v) for v in train_step(x, heat, box, mask)]
            seen_boxes.append(boxes)
            if (step + 1) % every == 0 or step + 1 == steps:
                elapsed = time.perf_counter() - start
                say(
                    f"localiser step {step + 1}/{steps}: heatmap loss {losses[0] / every:.3f}, "
                    f"box loss {losses[1] / every:.3f} ({(step + 1) * batch_size / elapsed:.0f} scenes/s)"
                )
                losses[:] = 0
    metrics = {"train_seconds": time.perf_counter() - start}
    metrics.update(_evaluate(model, held_px, held_masks, np.concatenate(seen_boxes), size, seed))
    say("localiser held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return model, metrics


def _evaluate(
    model: keras.Model,
    items: np.ndarray,
    masks: np.ndarray,
    train_boxes: np.ndarray,
    size: int,
    seed: int,
) -> dict[str, float]:
    """Recall on fresh scenes of held-out items, vs the centred box of the median training size."""
    scenes, true = synth_scenes(
        items, masks, EVAL_SCENES, size, np.random.default_rng([seed, 1 << 30])
    )
    pred = np.concatenate(
        [
            propose_boxes(model, scenes[i : i + 128], k=3, size=size)[0].numpy()
            for i in range(0, len(scenes), 128)
        ]
    )
    w, h = (
        np.median(train_boxes[:, 2] - train_boxes[:, 0]),
        np.median(train_boxes[:, 3] - train_boxes[:, 1]),
    )
    centred = np.tile([[[0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2]]], (len(true), 1, 1))
    return {
        "recall_at_iou_0.5@1": recall_at_iou(pred, true, 0.5, 1),
        "recall_at_iou_0.5@3": recall_at_iou(pred, true, 0.5, 3),
        "mean_iou@1": float(box_iou(pred[:, 0], true).mean()),
        "baseline_recall_at_iou_0.5": recall_at_iou(centred, true, 0.5, 1),
        "baseline_mean_iou": float(box_iou(centred[:, 0], true).mean()),
    }
