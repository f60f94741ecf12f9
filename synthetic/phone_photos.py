"""The phone style's photos (``phone``): a seller's studio shot and a buyer's phone photo of one
product layer, with the geometry that places the layer in a frame.

Listing photos are non-square studio shots (4:3 or 3:4), the item filling 65-90 % of the shorter
side, JPEG 90. Buyer photos are 4:3 frames where the item's box spans 20-60 % of the longer side,
anywhere, rotated and in perspective, in a cluttered room with other products; bad light, blur,
a phone's resample, noise, JPEG 35-85; some stored turned (with or without an EXIF tag).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from synthetic import photos, products, truth

ITEM_SIDE = (0.2, 0.6)  # the item's box, as a fraction of the frame's longer side
EXIF_TURNED, PLAIN_TURNED = 0.15, 0.05
STUDIO, REVIEW = 22, 23  # rng streams of the photos (``phone`` holds the others)


# ---------------------------------------------------------------- geometry


def _frame(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of a 4:3 photo, landscape or portrait, longer side ``size``."""
    short = round(size * 3 / 4)
    return (size, short) if rng.random() < 0.6 else (short, size)


def _warp(
    layer: Image.Image,
    frame: tuple[int, int],
    centre: tuple[float, float],
    side: float,
    rotation_deg: float,
    perspective: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The product layer drawn into a frame: premultiplied RGBA float32 [H, W, 4] in 0..1.

    ``side``: the layer's square canvas side in frame pixels (the product fills ~80 % of it);
    yaw, tilt and mirror come from ``rng``; ``perspective`` moves each corner by up to that
    fraction of ``side``.
    """
    n = max(8, round(side))
    small = layer.resize((n, n), Image.Resampling.BILINEAR)
    half = n / 2.0
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    dst = corners * np.array([rng.uniform(0.75, 1.0) * mirror, rng.uniform(0.8, 1.0)])
    th = np.deg2rad(rotation_deg)
    dst = dst @ np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]).T
    dst = dst + np.array(centre) + rng.uniform(-perspective, perspective, size=(4, 2)) * n
    coeffs = photos._homography(corners + half, dst)
    warped = small.transform(frame, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    return np.asarray(warped, dtype=np.float32) / 255.0


def _over(bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    return bg * (1 - fg[..., 3:4]) + fg[..., :3]


def _encode(rgb: np.ndarray, quality: int, exif_orientation: int = 1) -> bytes:
    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    if exif_orientation == 1:
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    # Stored turned, with the tag that tells a viewer how to turn it back (what phones do).
    stored = img.transpose(
        Image.Transpose.ROTATE_90 if exif_orientation == 6 else Image.Transpose.ROTATE_270
    )
    exif = Image.Exif()
    exif[0x0112] = exif_orientation
    stored.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------- listing photos


def studio_photo(layer: Image.Image, size: int, rng: np.random.Generator) -> bytes:
    """A seller's shot: a light paper sweep, the item centred, one of several angles."""
    w, h = _frame(size, rng)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    sweep = rng.uniform(0.86, 0.98) + rng.uniform(-0.015, 0.015, 3) - 0.06 * yy * rng.random()
    bg = np.broadcast_to(sweep, (h, w, 3)).astype(np.float32)
    fill = rng.uniform(0.65, 0.9) if rng.random() < 0.85 else rng.uniform(1.1, 1.4)  # detail shot
    side = min(w, h) * fill / 0.8  # the product is ~80 % of its layer
    centre = (w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h)
    fg = _warp(layer, (w, h), centre, side, rng.uniform(-15, 15), 0.03, rng)
    shadow = Image.fromarray((fg[..., 3] * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(size / 50)
    )
    s = np.asarray(shadow, dtype=np.float32)[..., None] / 255.0
    shaded = bg * (1 - rng.uniform(0.1, 0.3) * np.roll(s, max(1, h // 40), axis=0))
    return _encode(_over(shaded, fg), 90)


# ---------------------------------------------------------------- buyer photos


def _rgb(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> tuple[int, int, int]:
    c = lo + (hi - lo) * rng.random(3)
    return (int(c[0] * 255), int(c[1] * 255), int(c[2] * 255))


def _room(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A room behind the item: a wall, a table or floor, furniture and things, out of focus."""
    img = Image.new("RGB", (w, h), _rgb(rng, 0.3, 0.9))
    d = ImageDraw.Draw(img)
    horizon = rng.uniform(0.25, 0.65) * h
    d.polygon(  # the table top, seen from above at an angle
        [(0, horizon + rng.uniform(-0.1, 0.1) * h), (w, horizon), (w, h), (0, h)],
        fill=_rgb(rng, 0.15, 0.8),
    )
    for _ in range(int(rng.integers(5, 16))):  # furniture, books, boxes, plants, cables
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        bw, bh = rng.uniform(0.04, 0.45) * w, rng.uniform(0.04, 0.45) * h
        shape = rng.integers(3)
        fill = _rgb(rng)
        if shape == 0:
            d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=fill)
        elif shape == 1:
            d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=fill)
        else:
            d.line([x0, y0, x0 + bw, y0 + bh], fill=fill, width=int(rng.integers(1, 6)))
    out = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 2.0))), np.float32)
    if rng.random() < 0.5:  # a patterned cloth or wood grain on the table
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(a) + yy * np.sin(a)) / rng.uniform(2, 8))
        below = (yy > horizon)[..., None]
        out = out * np.where(below, 1 + 0.12 * wave[..., None], 1.0)
    return np.clip(out / 255.0, 0, 1).astype(np.float32)


def _light(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, a light falloff across the frame, gamma."""
    h, w, _ = rgb.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    a = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0.55, 1.2) * (1 + rng.uniform(0, 0.6) * (xx * np.cos(a) + yy * np.sin(a)))
    light = light * (1 - rng.uniform(0, 0.6) * (xx**2 + yy**2))
    t = rng.uniform(-1, 1)  # tungsten .. shade
    cast = np.array([1 + 0.18 * t, 1 + rng.uniform(-0.06, 0.06), 1 - 0.2 * t], np.float32)
    out = np.clip(rgb * light[..., None] * cast, 0, 1) ** rng.uniform(0.8, 1.25)
    return out.astype(np.float32)


def _optics(rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Defocus or motion blur, a phone's resample (digital zoom, low resolution), sensor noise."""
    img = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    w, h = img.size
    if rng.random() < 0.35:
        f = rng.uniform(0.35, 0.75)
        img = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR)
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    blur = rng.random()
    if blur < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6) * size / 256))
    elif blur < 0.7:  # hand shake: a short motion blur
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        if rng.random() < 0.5:
            kernel[k // 2, :] = 1
        else:
            kernel[np.arange(k), np.arange(k)] = 1
        if k in (3, 5):
            img = img.filter(ImageFilter.Kernel((k, k), kernel.ravel().tolist(), float(k)))
        else:
            img = img.filter(ImageFilter.BoxBlur(k / 4))
    out = np.asarray(img, np.float32) / 255.0
    sigma = np.float32(rng.uniform(0.005, 0.05))
    return (out + sigma * rng.standard_normal(out.shape, dtype=np.float32)).astype(np.float32)


def review_photo(
    num: int, layer: Image.Image, size: int, rng: np.random.Generator, seed: int
) -> tuple[bytes, tuple[float, float, float, float], float, int]:
    """A buyer's phone photo of listing ``num``'s item (``layer``): (JPEG bytes, true box as the
    viewer sees it, item side, EXIF tag). The other products in the room are drawn from
    ``default_rng([seed, num, REVIEW, 99, j])``, apart from ``rng``."""
    w, h = _frame(size, rng)
    rgb = _room(w, h, rng)
    # Other products in the room: drawn smaller, behind the item or beside it.
    for j in range(int(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1]))):
        other = products.sample_spec(np.random.default_rng([seed, num, REVIEW, 99, j]))
        o_layer = photos.as_layer(products.draw_product(other, 96))
        o_side = rng.uniform(0.15, 0.45) * max(w, h) / 0.8
        at = (rng.uniform(0, w), rng.uniform(0, h))
        rgb = _over(rgb, _warp(o_layer, (w, h), at, o_side, rng.uniform(-40, 40), 0.08, rng))
    item_side = rng.uniform(*ITEM_SIDE)  # the box's longer side, of the frame's longer side
    side = item_side * max(w, h) / 0.8
    margin = 0.45 * item_side * max(w, h)
    centre = (
        rng.uniform(min(margin, w / 2), max(w - margin, w / 2)),
        rng.uniform(min(margin, h / 2), max(h - margin, h / 2)),
    )
    fg = _warp(layer, (w, h), centre, side, rng.uniform(-35, 35), rng.uniform(0.02, 0.12), rng)
    box = truth.alpha_box(fg[..., 3]) or (0.0, 0.0, 1.0, 1.0)
    shadow = Image.fromarray((fg[..., 3] * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(size / 60)
    )
    s = np.asarray(shadow, dtype=np.float32)[..., None] / 255.0
    rgb = rgb * (1 - rng.uniform(0.0, 0.45) * np.roll(s, max(1, h // 50), axis=0))
    rgb = _optics(_light(_over(rgb, fg), rng), size, rng)
    measured = max((box[2] - box[0]) * w, (box[3] - box[1]) * h) / max(w, h)
    turn = rng.random()
    quality = int(rng.integers(35, 86))
    if turn < EXIF_TURNED:
        orientation = 6 if rng.random() < 0.5 else 8
        return _encode(rgb, quality, orientation), box, measured, orientation
    if turn < EXIF_TURNED + PLAIN_TURNED:  # held sideways, no tag: the item lies on its side
        rgb = np.ascontiguousarray(np.rot90(rgb))  # 90 degrees counter-clockwise
        x0, y0, x1, y1 = box
        box = (y0, 1 - x1, y1, 1 - x0)
    return _encode(rgb, quality), box, measured, 1
