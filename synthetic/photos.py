"""Photographing a product: the seller's studio shot and the buyer's review photo.

Both start from the same RGBA product layer (``products.draw_product``), so a review photo shows
exactly the listing's product, only photographed worse: that is the gap the model has to close
(Etsy mixes review photos into training for this reason).

* studio: plain light sweep background, small rotation, mirror, yaw and tilt (squash), scale,
  sometimes a close crop or (not the primary photo) a styled scene; JPEG quality 92.
* review: cluttered room, coloured backdrop or textured surface behind it; off-centre, rotated,
  perspective-warped; lighting gradient, white-balance shift, blur, sensor noise, a phone-camera
  resample; JPEG quality 40-85.

Geometry is one perspective transform from a pre-shrunk product layer, so the cost per photo is
a few image-size operations.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from synthetic import truth

STUDIO_QUALITY = 92


def _homography(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients that map output points ``dst`` back to input points ``src``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.array(rows, float), np.array(rhs, float)))


def _place(
    product: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: float,
    rotation_deg: float,
    shift: tuple[float, float],
    warp: float,
) -> np.ndarray:
    """The product warped into a size x size frame; premultiplied RGBA float32 (0..1)."""
    side = max(8, round(size * scale))
    # Shrink with a proper filter first (the perspective transform alone would alias).
    small = product.resize((side, side), Image.Resampling.BILINEAR)  # antialiased in PIL
    half = side / 2.0
    squash = rng.uniform(0.8, 1.0)  # the product turned a little away from the camera
    tilt = rng.uniform(0.85, 1.0)  # the camera a little above or below it
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    th = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    dst = corners * np.array([squash * mirror, tilt])
    dst = dst @ rot.T + np.array([size / 2 + shift[0] * size, size / 2 + shift[1] * size])
    dst = dst + rng.uniform(-warp, warp, size=(4, 2)) * size
    src = corners + half
    coeffs = _homography(src, dst)
    warped = small.transform(
        (size, size), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.float32) / 255.0


def _composite(
    bg: np.ndarray, fg: np.ndarray, shadow: float, rng: np.random.Generator
) -> np.ndarray:
    """Product over background with a soft contact shadow below it."""
    alpha = fg[..., 3:4]
    if shadow > 0:
        size = bg.shape[0]
        a = Image.fromarray((fg[..., 3] * 255).astype(np.uint8))
        dy = max(1, int(size * rng.uniform(0.01, 0.04)))
        a = a.transform(a.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, -dy)).filter(
            ImageFilter.GaussianBlur(size / 40)
        )
        s = np.asarray(a, dtype=np.float32)[..., None] / 255.0
        bg = bg * (1 - shadow * s)
    return bg * (1 - alpha) + fg[..., :3]  # fg is premultiplied


def _encode(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    img.save(buf, format="JPEG", quality=int(quality), optimize=False, progressive=False)
    return buf.getvalue()


def as_layer(product: np.ndarray) -> Image.Image:
    """The float RGBA product as a premultiplied PIL layer, ready to be photographed many times."""
    data = np.empty(product.shape, dtype=np.float32)
    np.multiply(product[..., :3], product[..., 3:4], out=data[..., :3])
    data[..., 3] = product[..., 3]
    data = (data * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(data, "RGBa")


# ---------------------------------------------------------------- studio


def studio_photo(
    layer: Image.Image, size: int, rng: np.random.Generator, lifestyle_ok: bool = False
) -> bytes:
    """A seller's product shot: plain light background, product centred and well lit.

    With ``lifestyle_ok`` (not for the primary photo) some shots are styled scenes instead: a
    room or a surface behind the product, but still the seller's good light and focus.
    """
    if lifestyle_ok and rng.random() < 0.15:
        bg = 0.35 + 0.65 * _background(size, rng) * rng.uniform(0.9, 1.15)
        scale, shift = rng.uniform(0.6, 0.9), rng.uniform(-0.15, 0.15, size=2)
    else:
        yy = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        base = rng.uniform(0.88, 0.985)
        tint = rng.uniform(-0.015, 0.015, size=3).astype(np.float32)
        sweep = base + tint - 0.05 * yy * rng.uniform(0, 1)  # a paper sweep, darker at the bottom
        bg = np.broadcast_to(sweep, (size, size, 3)).astype(np.float32)
        if rng.random() < 0.15:  # a detail shot: close crop, part of the product out of frame
            scale, shift = rng.uniform(1.3, 1.6), rng.uniform(-0.2, 0.2, size=2)
        else:
            scale, shift = rng.uniform(0.8, 1.12), rng.uniform(-0.04, 0.04, size=2)
    rotation, warp = rng.uniform(-10, 10), rng.uniform(0, 0.03)
    fg = _place(layer, size, rng, scale, rotation, (shift[0], shift[1]), warp)
    rgb = _composite(np.clip(bg, 0, 1), fg, shadow=rng.uniform(0.1, 0.3), rng=rng)
    return _encode(rgb, STUDIO_QUALITY)


# ---------------------------------------------------------------- review


def _random_rgb(rng: np.random.Generator, muted: bool) -> np.ndarray:
    c = rng.random(3).astype(np.float32)
    if muted:
        c = 0.45 + 0.35 * c * rng.uniform(0.3, 1.0)
    return c


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Where a buyer puts the product: a room, a coloured backdrop or a textured surface."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # a room: a wall, a table edge, clutter
        horizon = rng.uniform(0.35, 0.7)
        img = Image.new("RGB", (size, size))
        draw = ImageDraw.Draw(img)
        wall, table = _random_rgb(rng, True), _random_rgb(rng, True) * rng.uniform(0.5, 1.0)
        draw.rectangle([0, 0, size, horizon * size], fill=tuple(int(c * 255) for c in wall))
        draw.rectangle([0, horizon * size, size, size], fill=tuple(int(c * 255) for c in table))
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = rng.uniform(-0.2, 1.0, size=2) * size
            w, h = rng.uniform(0.05, 0.4, size=2) * size
            fill = tuple(int(c * 255) for c in _random_rgb(rng, rng.random() < 0.5))
            if rng.random() < 0.5:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
            else:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))  # out-of-focus background
        return np.asarray(img, dtype=np.float32) / 255.0
    if kind == 1:  # coloured backdrop with a light falloff
        c0, c1 = _random_rgb(rng, False), _random_rgb(rng, False)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(0, 1))[..., None]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return (c0 * (1 - t) + c1 * t).astype(np.float32) * rng.uniform(0.6, 1.0)
    # a textured surface: bedsheet, carpet or wooden floor
    base = _random_rgb(rng, True)
    period = rng.uniform(0.02, 0.08)
    angle = rng.uniform(0, np.pi)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    noise = (
        np.asarray(
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        / 255.0
    )
    tex = (
        0.8
        + 0.12 * np.sin(2 * np.pi * (u + 2 * noise))
        + 0.1 * rng.random((size, size)).astype(np.float32)
    )
    return (base * tex[..., None]).astype(np.float32)


def _occluder(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Something in front of the product at a frame edge: a finger, a cup, a cable."""
    size = rgb.shape[0]
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    side = int(rng.integers(4))
    w = rng.uniform(0.1, 0.25) * size
    pos = rng.uniform(0.2, 0.8) * size
    depth = rng.uniform(0.15, 0.35) * size
    box = {
        0: [pos - w / 2, -w, pos + w / 2, depth],
        1: [pos - w / 2, size - depth, pos + w / 2, size + w],
        2: [-w, pos - w / 2, depth, pos + w / 2],
        3: [size - depth, pos - w / 2, size + w, pos + w / 2],
    }[side]
    draw.rounded_rectangle(box, radius=w / 2, fill=255)
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)[..., None] / 255.0
    colour = (
        np.array([0.85, 0.62, 0.5], np.float32) * rng.uniform(0.6, 1.1)
        if rng.random() < 0.5
        else _random_rgb(rng, True)
    )
    return rgb * (1 - m) + colour * m


def review_photo(
    layer: Image.Image, size: int, rng: np.random.Generator
) -> tuple[bytes, int, tuple[float, float, float, float]]:
    """A buyer's phone photo of the same product: (JPEG bytes, quality used, the product's true
    box as (x0, y0, x1, y1) fractions of the photo)."""
    bg = _background(size, rng)
    fg = _place(
        layer,
        size,
        rng,
        scale=rng.uniform(0.45, 0.95),
        rotation_deg=rng.uniform(-30, 30),
        shift=(rng.uniform(-0.22, 0.22), rng.uniform(-0.2, 0.22)),
        warp=rng.uniform(0.03, 0.14),
    )
    box = truth.alpha_box(fg[..., 3]) or (0.0, 0.0, 1.0, 1.0)
    rgb = _composite(bg, fg, shadow=rng.uniform(0.0, 0.45), rng=rng)
    if rng.random() < 0.2:
        rgb = _occluder(rgb, rng)
    # Light: overall exposure, a directional gradient, white balance (tungsten/shade/flash), gamma.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    a = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0.65, 1.2) * (1 + rng.uniform(0, 0.5) * (xx * np.cos(a) + yy * np.sin(a)))
    vignette = 1 - rng.uniform(0, 0.5) * (xx**2 + yy**2)
    temp = rng.uniform(-1, 1)
    wb = np.array([1 + 0.14 * temp, 1 + rng.uniform(-0.04, 0.04), 1 - 0.16 * temp], np.float32)
    rgb = np.clip(rgb * (light * vignette)[..., None] * wb, 0, 1) ** rng.uniform(0.8, 1.2)
    img = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.4:  # phone resolution / digital zoom
        low = max(8, int(size * rng.uniform(0.45, 0.8)))
        img = img.resize((low, low), Image.Resampling.BILINEAR).resize(
            (size, size), Image.Resampling.BILINEAR
        )
    if rng.random() < 0.7:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.4) * size / 128))
    out = np.asarray(img, dtype=np.float32) / 255.0
    sigma = np.float32(rng.uniform(0.005, 0.04))
    out = out + sigma * rng.standard_normal(out.shape, dtype=np.float32)  # sensor noise
    quality = int(rng.integers(40, 86))
    return _encode(out, quality), quality, box
