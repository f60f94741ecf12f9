"""Buyer-like views of listing photos, made batch-wise in the training input pipeline.

A buyer's photo differs from the seller's in two ways the model must learn to ignore:

* how it is photographed: pose, light, white balance, blur, noise (every listing photo gets
  some of this: ``augment``'s studio branch, the behaviour since the first model);
* how much of the frame the item fills: in a phone photo the item is often small (20-60 % of
  the side), off-centre, in a cluttered room beside other products, in a 4:3 frame that the
  letterbox rule pads with white bars. The phone branch builds exactly that from a studio
  photo: the item is cut out by its plain background (``studio_mask``), shrunk, placed anywhere
  on clutter, with another item of the batch (another listing: a hard negative in the frame)
  pasted smaller beside it. A share of all views is also shown at a phone's low resolution,
  which is what a crop of a small item looks like once it is enlarged to the model's input.

Images are normalised (mean 0, std 1 per channel); ``white`` is the letterbox padding colour in
those units.
"""

from __future__ import annotations

import tensorflow as tf

# Share of listing photos turned into phone views (the rest keep the studio branch): half keeps
# what the first model learnt from full-frame views; half teaches small, off-centre items.
PHONE_VIEW_RATE = 0.5
ITEM_SCALE = (0.22, 0.65)  # the item's side in a phone view, as a fraction of the frame
# The other item is smaller than the listing's own, so the view's label stays unambiguous.
OTHER_ITEM_SCALE = (0.4, 0.8)  # of the item's scale
LOW_RES_RATE = 0.3  # views shown at a phone's resolution (downsampled, then enlarged)
LOW_RES_FACTOR = (0.3, 0.7)


def random_backgrounds(n: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
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


def _room(n: tf.Tensor, size: tf.Tensor, blocks: int = 8) -> tf.Tensor:
    """A room-like background: the gradient backgrounds with solid blocks painted over them
    (furniture, books, boxes: hard edges, as in the rooms buyers photograph in)."""
    out = random_backgrounds(n, size)
    yy = tf.linspace(0.0, 1.0, size[0])[None, :, None, None]
    xx = tf.linspace(0.0, 1.0, size[1])[None, None, :, None]
    for _ in range(blocks):
        x0, y0 = (
            tf.random.uniform([n, 1, 1, 1], -0.2, 1.0),
            tf.random.uniform([n, 1, 1, 1], -0.2, 1.0),
        )
        w, h = (
            tf.random.uniform([n, 1, 1, 1], 0.05, 0.5),
            tf.random.uniform([n, 1, 1, 1], 0.05, 0.5),
        )
        inside = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        out = tf.where(inside, tf.random.normal([n, 1, 1, 3], 0.0, 1.0), out)
    return out


def _affine(
    images: tf.Tensor,
    size: tf.Tensor,
    angle: tf.Tensor,
    zoom: tf.Tensor,
    tx: tf.Tensor,
    ty: tf.Tensor,
    fill_mode: str,
) -> tf.Tensor:
    """Rotate by ``angle``, scale by ``zoom`` about the centre, then shift by (tx, ty) pixels."""
    hw = tf.cast(size, tf.float32)
    cy, cx = hw[0] / 2.0, hw[1] / 2.0
    a0, a1 = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    b0, b1 = -tf.sin(angle) / zoom, tf.cos(angle) / zoom
    # Output pixel (x, y) samples input a0*x + a1*y + a2, b0*x + b1*y + b2.
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros_like(angle)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1),
        output_shape=size,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode,
    )


def _studio_geometry(images: tf.Tensor, n: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Per-image rotation (+-25 deg), zoom (0.6..1.15), shift (+-15 %)."""
    hw = tf.cast(size, tf.float32)
    return _affine(
        images,
        size,
        tf.random.uniform([n], -0.44, 0.44),
        tf.random.uniform([n], 0.6, 1.15),
        tf.random.uniform([n], -0.15, 0.15) * hw[1],
        tf.random.uniform([n], -0.15, 0.15) * hw[0],
        "NEAREST",
    )


def studio_mask(images: tf.Tensor, white: tf.Tensor | None = None) -> tf.Tensor:
    """Soft foreground mask [N, H, W, 1] of studio photos: far from the background colour.

    The background colour is the mean of the border; with ``white`` (the letterbox padding), the
    border pixels that are padding are left out of that mean and padding is background too, so a
    4:3 studio photo letterboxed into the square is cut out by its paper, not by its bars.
    """
    if white is None:
        border = tf.stack(
            [images[:, 0, 0], images[:, 0, -1], images[:, -1, 0], images[:, -1, -1]], axis=1
        )
        background = tf.reduce_mean(border, axis=1)[:, None, None, :]
        distance = tf.norm(images - background, axis=-1, keepdims=True)
        return tf.sigmoid((distance - 0.5) * 12.0)
    border = tf.concat(
        [images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1
    )  # [N, 2H + 2W, 3]
    paper = tf.cast(tf.norm(border - white[:, 0], axis=-1, keepdims=True) > 0.3, tf.float32)
    background = tf.math.divide_no_nan(
        tf.reduce_sum(border * paper, axis=1), tf.reduce_sum(paper, axis=1)
    )[:, None, None, :]
    background = tf.where(
        tf.reduce_sum(paper, axis=[1, 2])[:, None, None, None] > 0, background, white
    )
    distance = tf.minimum(
        tf.norm(images - background, axis=-1, keepdims=True),
        tf.norm(images - white, axis=-1, keepdims=True),
    )
    return tf.sigmoid((distance - 0.5) * 12.0)


def _placed(
    images: tf.Tensor, mask: tf.Tensor, size: tf.Tensor, zoom: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Items shrunk by ``zoom`` [N] and placed anywhere they fit; (pixels, mask)."""
    hw = tf.cast(size, tf.float32)
    n = tf.shape(zoom)[0]
    room = (1.0 - zoom) / 2.0  # how far the centre may move while the item stays in the frame
    tx = tf.random.uniform([n], -1.0, 1.0) * room * hw[1]
    ty = tf.random.uniform([n], -1.0, 1.0) * room * hw[0]
    angle = tf.random.uniform([n], -0.6, 0.6)
    stacked = tf.concat([images, mask], axis=-1)
    out = _affine(stacked, size, angle, zoom, tx, ty, "CONSTANT")
    return out[..., :3], out[..., 3:]


def phone_views(images: tf.Tensor, white: tf.Tensor) -> tf.Tensor:
    """Studio photos -> phone photos: the item small and off-centre on clutter beside another
    item of the batch, and half of them in a 4:3 frame letterboxed with ``white`` bars."""
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    mask = studio_mask(images, white)
    out = _room(n, size)
    zoom = tf.random.uniform([n], *ITEM_SCALE)
    other, other_mask = _placed(
        tf.roll(images, 1, axis=0),
        tf.roll(mask, 1, axis=0),
        size,
        zoom * tf.random.uniform([n], *OTHER_ITEM_SCALE),
    )
    out = out * (1.0 - other_mask) + other * other_mask
    item, item_mask = _placed(images, mask, size, zoom)
    out = out * (1.0 - item_mask) + item * item_mask
    # A 4:3 photo letterboxed into the square: white bars on two opposite sides.
    h, w = size[0], size[1]
    bar_h, bar_w = h // 8, w // 8
    rows = tf.range(h)[None, :, None, None]
    cols = tf.range(w)[None, None, :, None]
    landscape = (rows < bar_h) | (rows >= h - bar_h)
    portrait = (cols < bar_w) | (cols >= w - bar_w)
    kind = tf.random.uniform([n, 1, 1, 1])
    bars = tf.where(kind < 0.3, landscape, tf.where(kind < 0.5, portrait, False))
    return tf.where(bars, white, out)


def _low_resolution(images: tf.Tensor) -> tf.Tensor:
    """A share of the batch at a phone's resolution: downsampled, then enlarged back."""
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    factor = tf.random.uniform([], *LOW_RES_FACTOR)
    small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * factor, tf.int32), 8)
    low = tf.image.resize(tf.image.resize(images, small, antialias=True), size)
    return tf.where(tf.random.uniform([n, 1, 1, 1]) < LOW_RES_RATE, low, images)


def augment(
    images: tf.Tensor,
    is_listing: tf.Tensor,
    white: tf.Tensor | None = None,
    phone_rate: float = PHONE_VIEW_RATE,
) -> tf.Tensor:
    """Make studio listing photos look like buyer photos: pose, scale, background, light, blur, noise.

    ``is_listing`` [N] bool marks studio photos (their near-uniform background can be cut away);
    ``white`` [N, 1, 1, 3] is the letterbox padding colour in normalised units (None: no phone
    views, the behaviour before phone views existed).
    """
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    flip = tf.random.uniform([n, 1, 1, 1]) < 0.5
    flipped = tf.where(flip, tf.reverse(images, axis=[2]), images)
    out = _studio_geometry(flipped, n, size)
    mask = 1.0 - studio_mask(out, white)  # background weight
    swap = tf.logical_and(is_listing[:, None, None, None], tf.random.uniform([n, 1, 1, 1]) < 0.7)
    out = tf.where(swap, out * (1.0 - mask) + random_backgrounds(n, size) * mask, out)
    if white is not None and phone_rate > 0:
        phone = tf.logical_and(
            is_listing[:, None, None, None], tf.random.uniform([n, 1, 1, 1]) < phone_rate
        )
        out = tf.where(phone, phone_views(flipped, white), out)
    # Lighting: per-image gain and offset per channel (white balance), and exposure.
    gain = tf.random.uniform([n, 1, 1, 3], 0.85, 1.15) * tf.random.uniform([n, 1, 1, 1], 0.75, 1.2)
    offset = tf.random.normal([n, 1, 1, 3], 0.0, 0.1) + tf.random.normal([n, 1, 1, 1], 0.0, 0.2)
    out = out * gain + offset
    if white is not None:
        out = _low_resolution(out)
    # Phone optics: blur half of the batch, then sensor noise.
    blurred = tf.nn.avg_pool2d(out, 3, 1, "SAME")
    out = tf.where(tf.random.uniform([n, 1, 1, 1]) < 0.5, blurred, out)
    return out + tf.random.normal(tf.shape(out), 0.0, 0.05)
