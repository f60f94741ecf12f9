"""The localiser's training data, made from the catalog itself.

A listing (studio) photo shows one product on a plain light background, so its mask, and so its
box, comes almost for free (``item_masks``). Cut out and pasted onto clutter, photographed as a
buyer would (small, off-centre, rotated, colour cast, blur, noise, JPEG), it gives scenes whose
true box is known (``synth_scenes``). numpy + PIL, no TensorFlow: this runs beside the training
step, in a thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ------------------------------------------------------------------ masks from studio photos

_RING = 3  # border pixels that sample a studio photo's background
# Thresholds in 0..1 pixel units, each at least _NOISE_SCALE times the border's own noise (JPEG,
# grain). A soft shadow only darkens the background without changing its hue, so darkening up to
# _SHADOW is background unless colour or an edge says otherwise.
_CHROMA = 0.03
_BRIGHTER = 0.04
_SHADOW = 0.3
_EDGE = 0.12  # central difference, largest over channels: product outlines are sharp, shadows soft
_NOISE_SCALE = 5.0
_CHUNK = 256  # photos masked at a time


def _dilate(m: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of [M, S, S] masks (nothing comes in from outside the frame)."""
    out = m.copy()
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    grown = out.copy()
    grown[:, :, 1:] |= out[:, :, :-1]
    grown[:, :, :-1] |= out[:, :, 1:]
    return grown


def _erode(m: np.ndarray) -> np.ndarray:
    return ~_dilate(~m)


def _fill_holes(walls: np.ndarray) -> np.ndarray:
    """Everything the border cannot reach without crossing ``walls``: the product with its holes
    filled (a white product's outline encloses its interior)."""
    free = ~walls
    reach = np.zeros_like(walls)
    for side in (np.s_[:, 0, :], np.s_[:, -1, :], np.s_[:, :, 0], np.s_[:, :, -1]):
        reach[side] = free[side]
    while True:
        before = reach
        for _ in range(8):  # compare only now and then: the comparison costs as much as a step
            reach = _dilate(reach) & free
        if np.array_equal(reach, before):
            return ~reach


def _background(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's background (p: [M, 3, S, S], channels first) as a plane per channel (a
    studio sweep darkens towards the bottom), fitted to the border by least squares, then refitted
    without the border pixels the product covers (a close crop); and the border's noise level
    [M, 1, 1] around that plane."""
    s = p.shape[-1]
    lin = np.linspace(-1.0, 1.0, s, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    design = np.stack([np.ones_like(yy), yy, xx])  # [3 terms, S, S]
    ring = np.zeros((s, s), bool)
    ring[:_RING], ring[-_RING:], ring[:, :_RING], ring[:, -_RING:] = True, True, True, True
    d, v = design[:, ring], p[:, :, ring]  # [3 terms, B], [M, 3 ch, B]
    w = np.ones((len(p), d.shape[1]), np.float32)
    for _ in range(3):
        a = np.einsum("mb,ib,jb->mij", w, d, d) + 1e-3 * np.eye(3, dtype=np.float32)
        coef = np.linalg.solve(a, np.einsum("mb,ib,mcb->mic", w, d, v))  # [M, 3 terms, 3 ch]
        residual = np.linalg.norm(v - np.einsum("ib,mic->mcb", d, coef), axis=1)
        typical = np.median(residual, axis=1, keepdims=True)
        w = (residual < np.maximum(3.0 * typical, 0.03)).astype(np.float32)
    background = sum(coef[:, i, :, None, None] * design[i] for i in range(3))
    return background, typical[:, :, None]


def item_masks(pixels: np.ndarray) -> np.ndarray:
    """Studio photos uint8 [M, S, S, 3] -> bool product masks [M, S, S].

    Background is what is close to the colour of the photo's border (a plane fitted to it, so a
    sweep's gradient is background too). Foreground: a different hue, brighter, darker than a soft
    shadow could make it, or a sharp edge (a white product on white shows its outline); the
    outline's inside is filled, then a 3x3 opening drops specks. Photos with the product
    touching most of the border come out wrong: filter masks by area (``train_localiser`` does).
    """
    square = pixels.ndim == 4 and pixels.shape[1] == pixels.shape[2] and pixels.shape[3] == 3
    if pixels.dtype != np.uint8 or not square:
        raise ValueError(f"item_masks wants uint8 [M, S, S, 3], got {pixels.dtype} {pixels.shape}")
    masks = np.zeros(pixels.shape[:3], bool)
    for i in range(0, len(pixels), _CHUNK):  # bounded memory: ~10 float copies of a chunk
        masks[i : i + _CHUNK] = _masks(pixels[i : i + _CHUNK])
    return masks


def _masks(pixels: np.ndarray) -> np.ndarray:
    # Channels first: numpy broadcasts slowly along a last axis of 3.
    p = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    background, noise = _background(p)
    floor = _NOISE_SCALE * noise
    diff = p - background
    lum = diff.mean(axis=1)
    chroma = np.sqrt(np.square(diff - lum[:, None]).sum(axis=1))
    colour = (
        (chroma > np.maximum(_CHROMA, floor))
        | (lum > np.maximum(_BRIGHTER, floor))
        | (lum < -_SHADOW)
    )
    edge = np.zeros(lum.shape, np.float32)
    edge[:, 1:-1, 1:-1] = np.maximum(
        np.abs(p[..., 2:, 1:-1] - p[..., :-2, 1:-1]), np.abs(p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    ).max(axis=1)
    filled = _fill_holes(_erode(_dilate(colour | (edge > np.maximum(_EDGE, floor)))))
    # An edge marks both sides of an outline, and JPEG's halved colour resolution bleeds a
    # product's hue a pixel out: drop that outer ring. Then an opening drops specks.
    return _dilate(_erode(_erode(filled)))


# ------------------------------------------------------------------ cluttered scenes


@dataclass(frozen=True)
class SceneStyle:
    """How a buyer photographs the item; the defaults follow what buyer photos show."""

    min_side: float = 0.2  # the main item's box, longer side, as a fraction of the frame
    max_side: float = 0.6
    max_rotation_deg: float = 30.0
    perspective: float = 0.06  # corner jitter, as a fraction of the item's side
    # P(0, 1, 2 other products): the target is the largest fully visible one, so the others are
    # smaller (distractor_scale times the main item's side) and may be cut off by the frame.
    distractors: tuple[float, float, float] = (0.45, 0.35, 0.2)
    distractor_scale: tuple[float, float] = (0.35, 0.75)
    shadow: float = 0.5  # P(a soft contact shadow under the main item)
    colour: bool = True  # colour cast, exposure and a lighting gradient
    blur: float = 0.6  # P(blur)
    noise: float = 0.05  # largest sensor noise std (0..1 units)
    jpeg: float = 0.5  # P(JPEG at quality 35..85)
    letterbox: float = 0.2  # P(a non-square photo letterboxed with white bars, as decode does)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 matrix that maps the 4 points ``src`` [4, 2] onto ``dst`` [4, 2]."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist(), strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return np.append(np.linalg.solve(np.array(rows), np.array(rhs)), 1.0).reshape(3, 3)


def _cutout(
    item: np.ndarray, mask: np.ndarray, longer: float, rng: np.random.Generator, style: SceneStyle
) -> Image.Image:
    """The item cut out by its mask, mirrored, rotated, perspective-warped and scaled so that its
    box's longer side is about ``longer`` pixels; an RGBA layer cropped to its alpha > 50% box."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    alpha = mask[crop]
    h, w = alpha.shape
    # Premultiplied, so that resampling never blends in the studio background's colour.
    layer = Image.fromarray(np.ascontiguousarray(item[crop]))
    layer.putalpha(Image.fromarray(alpha.view(np.uint8) * np.uint8(255)))
    layer = layer.convert("RGBa")
    # Shrink with an antialiasing filter first; the warp below then only rescales by ~0.7..1.
    k = min(1.0, longer / max(h, w))
    layer = layer.resize((max(2, round(w * k)), max(2, round(h * k))), Image.Resampling.BILINEAR)
    w, h = layer.size
    theta = np.deg2rad(rng.uniform(-style.max_rotation_deg, style.max_rotation_deg))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    dst = (src - [w / 2, h / 2]) * [1.0 if rng.random() < 0.5 else -1.0, 1.0] @ rot.T
    dst += rng.uniform(-style.perspective, style.perspective, (4, 2)) * max(w, h)
    warp = _homography(src, dst)
    # Where the product's pixels land decides the scale and the canvas (not the crop's corners).
    alpha_px = np.asarray(layer.getchannel(3))
    # A thin product shrunk to a few pixels can keep no pixel over half alpha: then its faint ones
    # place it, or else its whole layer (a 160-px training's tiny distractor crashed without this).
    ys, xs = np.nonzero(alpha_px > 127)
    if not len(xs):
        ys, xs = np.nonzero(alpha_px > 0)
    if not len(xs):
        ys, xs = np.array([0, 0, h - 1, h - 1]), np.array([0, w - 1, 0, w - 1])
    pts = warp @ np.stack([xs + 0.5, ys + 0.5, np.ones(len(xs))])
    lo, hi = (pts[:2] / pts[2]).min(axis=1), (pts[:2] / pts[2]).max(axis=1)
    scale = longer / max(float((hi - lo).max()) + 1.0, 1.0)
    # Then scale and shift so that they start one pixel in (room for the bilinear fringe).
    place = np.array([[scale, 0, 1 - lo[0] * scale], [0, scale, 1 - lo[1] * scale], [0, 0, 1]])
    inverse = np.linalg.inv(place @ warp)  # PIL maps output -> input
    extent = np.ceil((hi - lo) * scale).astype(int) + 2
    size = (int(extent[0]), int(extent[1]))
    out = layer.transform(
        size,
        Image.Transform.PERSPECTIVE,
        tuple((inverse / inverse[2, 2]).ravel()[:8]),
        Image.Resampling.BILINEAR,
    )
    solid = np.asarray(out.getchannel(3)) > 127
    rows, cols = np.nonzero(solid.any(axis=1))[0], np.nonzero(solid.any(axis=0))[0]
    if len(rows):
        out = out.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    return out.convert("RGBA")


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of [n, 3, c, c] grids to [n, 3, size, size] as up @ grid @ up.T."""
    c = grid.shape[-1]
    pos = np.clip((np.arange(size) + 0.5) / size * c - 0.5, 0, c - 1)
    lo = np.minimum(pos.astype(int), c - 2)
    up = np.zeros((size, c), np.float32)
    up[np.arange(size), lo] = 1 - (pos - lo)
    up[np.arange(size), lo + 1] = pos - lo
    # Many small products, not one large one: BLAS would thread that, and on a busy machine its
    # threads cost more than they save.
    return np.matmul(np.matmul(up, grid), up.T)


def _backgrounds(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Busy backgrounds, float32 [n, 3, size, size] (channels first: numpy broadcasts fast along
    the long axes) in 0..1: a two-colour gradient, coarse and fine blotches and, for two thirds,
    stripes or checks."""
    lin = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = lin[None, None, :, None], lin[None, None, None, :]

    def uniform(lo: float, hi: float, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(lo, hi, shape).astype(np.float32)

    a, b = uniform(0, 2 * np.pi, (n, 1, 1, 1)), uniform(0, np.pi, (n, 1, 1, 1))
    c0, c1 = uniform(0, 1, (n, 3, 1, 1)), uniform(0, 1, (n, 3, 1, 1))
    bg = c0 + (c1 - c0) * (xx * np.cos(a) + yy * np.sin(a) + 0.5)
    for cells, amplitude in ((4, 0.15), (12, 0.1)):
        grid = rng.standard_normal((n, 3, cells, cells), np.float32)
        bg += _upsample(grid * uniform(0, amplitude, (n, 1, 1, 1)), size)
    freq = uniform(3, 20, (n, 1, 1, 1)) * np.float32(2 * np.pi)
    stripes = np.sin(freq * (xx * np.cos(b) + yy * np.sin(b)))
    kind = rng.integers(0, 3, (n, 1, 1, 1))
    checks = np.sign(stripes * np.sin(freq * (yy * np.cos(b) - xx * np.sin(b))))
    texture = np.where(kind == 1, stripes, checks) * (kind > 0)
    bg += texture * uniform(-0.3, 0.3, (n, 3, 1, 1))
    return np.clip(bg, 0.0, 1.0, out=bg)


def _shapes(img: Image.Image, rng: np.random.Generator) -> None:
    """2..9 random flat shapes: table edges, boxes, plates, cables."""
    draw = ImageDraw.Draw(img)
    s = img.size[0]
    for _ in range(rng.integers(2, 10)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(-0.2, 1.0, 2) * s
        w, h = rng.uniform(0.05, 0.7, 2) * s
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        elif kind == 2:
            pts = rng.uniform(-0.2, 1.2, (int(rng.integers(3, 7)), 2)) * s
            draw.polygon([tuple(p) for p in pts], fill=colour)
        else:
            draw.line((x, y, x + w, y + h), fill=colour, width=int(rng.integers(1, 6)))


def _shadow(img: Image.Image, layer: Image.Image, x: int, y: int, rng: np.random.Generator) -> None:
    """A soft dark blob below and beside the item (a contact shadow); not part of its box."""
    w, h = layer.size
    pad = 4
    a = Image.new("L", (w + 2 * pad, h + 2 * pad))
    a.paste(layer.getchannel(3), (pad, pad))
    blurred = np.asarray(a.filter(ImageFilter.BoxBlur(rng.uniform(1, 3))), np.float32)
    a = Image.fromarray((blurred * rng.uniform(0.3, 0.7)).astype(np.uint8))
    dx, dy = int(rng.uniform(-0.1, 0.1) * w), int(rng.uniform(0.02, 0.12) * h)
    img.paste((0, 0, 0), (x - pad + dx, y - pad + dy), a)


def _degrade(canvas: np.ndarray, rng: np.random.Generator, style: SceneStyle) -> np.ndarray:
    """A phone's picture of the scenes uint8 [n, s, s, 3]: colour cast, exposure and a lighting
    gradient, blur, sensor noise, JPEG. Float32, channels first, in place where possible (speed)."""
    n, s = canvas.shape[:2]
    x = np.ascontiguousarray(canvas.transpose(0, 3, 1, 2), dtype=np.float32)
    if style.colour:
        gain = rng.uniform(0.75, 1.25, (n, 3, 1, 1)) * rng.uniform(0.55, 1.45, (n, 1, 1, 1))
        lin = np.linspace(-0.5, 0.5, s, dtype=np.float32)
        a = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)).astype(np.float32)
        slope = rng.uniform(0, 0.6, (n, 1, 1, 1)).astype(np.float32)
        x *= 1 + slope * (
            lin[None, None, None, :] * np.cos(a) + lin[None, None, :, None] * np.sin(a)
        )
        x *= gain.astype(np.float32)
        x += rng.normal(0, 0.03 * 255, (n, 3, 1, 1)).astype(np.float32)
    # Blur: one or two passes of a separable [w, 1-2w, w] kernel, w per photo.
    for i in np.flatnonzero(rng.random(n) < style.blur):
        for w in rng.uniform(0, 0.33, int(rng.integers(1, 3))).astype(np.float32):
            for axis in (1, 2):
                img = np.moveaxis(x[i], axis, 0)
                out = img * (1 - 2 * w)
                out[1:] += w * img[:-1]
                out[:-1] += w * img[1:]
                out[0] += w * img[0]
                out[-1] += w * img[-1]
                img[:] = out
    # Sensor noise from a few shared normal fields: drawing n fresh ones costs more than the rest.
    bank = rng.standard_normal((min(n, 8), 3, s, s), np.float32)
    sigma = rng.uniform(0, style.noise * 255, (n, 1, 1, 1)).astype(np.float32)
    x += bank[rng.integers(0, len(bank), n)] * sigma
    x += 0.5  # round, not truncate, below
    out = np.empty(canvas.shape, np.uint8)
    np.copyto(out, np.clip(x, 0, 255, out=x).transpose(0, 2, 3, 1), casting="unsafe")
    for i in np.flatnonzero(rng.random(n) < style.jpeg):
        buf = io.BytesIO()
        Image.fromarray(out[i]).save(buf, format="JPEG", quality=int(rng.integers(35, 86)))
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def _letterbox(scene: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> None:
    """In place: a landscape (or portrait) photo letterboxed into the square with white bars, as
    ``decode_image`` does: keep a band of the scene that holds the whole item, white elsewhere."""
    s = scene.shape[0]
    portrait = rng.random() < 0.5
    view = scene.transpose(1, 0, 2) if portrait else scene  # the band runs along axis 0
    lo, hi = (box[0], box[2]) if portrait else (box[1], box[3])
    y0, y1 = int(np.floor(lo * s)), int(np.ceil(hi * s))
    band = max(int(rng.uniform(0.56, 0.9) * s), y1 - y0)
    start = int(rng.integers(max(0, y1 - band), min(y0, s - band) + 1))
    top = (s - band) // 2
    kept = view[start : start + band].copy()
    view[:] = 255
    view[top : top + band] = kept
    shift = (top - start) / s
    if portrait:
        box[[0, 2]] += shift
    else:
        box[[1, 3]] += shift


def synth_scenes(
    items: np.ndarray,
    masks: np.ndarray,
    n: int,
    size: int,
    rng: np.random.Generator,
    style: SceneStyle = SceneStyle(),
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` buyer-photo-like scenes uint8 [n, size, size, 3] and the main item's true box float32
    [n, 4] as (x0, y0, x1, y1) fractions of the frame (the tight box of its pasted pixels).

    Each scene: a busy background, sometimes 1-2 other items (smaller, maybe cut off: not the
    target), the main item (a random one of ``items`` [M, S, S, 3] cut out by ``masks`` [M, S, S]),
    fully in frame, its box's longer side 20-60% of the frame, then the camera's degradations.
    ~1.7 ms a scene at 128 px on one core (~570 scenes/s on a busy 2-core machine).
    """
    if len(items) != len(masks) or not len(items):
        raise ValueError(f"{len(items)} items but {len(masks)} masks")
    usable = np.nonzero(masks.reshape(len(masks), -1).any(axis=1))[0]
    if not len(usable):
        raise ValueError("every mask is empty")
    canvas = np.empty((n, size, size, 3), np.uint8)
    np.copyto(
        canvas, (_backgrounds(n, size, rng) * 255.0 + 0.5).transpose(0, 2, 3, 1), casting="unsafe"
    )
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        img = Image.fromarray(canvas[i])
        _shapes(img, rng)
        pick = int(rng.integers(len(usable)))
        main = int(usable[pick])
        longer = rng.uniform(style.min_side, style.max_side) * size
        for _ in range(rng.choice(3, p=style.distractors) if len(usable) > 1 else 0):
            # Another product than the main one (a second copy of it would be a second target).
            other = int(usable[(pick + rng.integers(1, len(usable))) % len(usable)])
            d = _cutout(
                items[other],
                masks[other],
                longer * rng.uniform(*style.distractor_scale),
                rng,
                style,
            )
            cx, cy = rng.uniform(0, size, 2)  # anywhere, perhaps partly out of the frame
            img.paste(d, (int(cx - d.size[0] / 2), int(cy - d.size[1] / 2)), d)
        layer = _cutout(items[main], masks[main], longer, rng, style)
        w, h = layer.size
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if rng.random() < style.shadow:
            _shadow(img, layer, x, y, rng)
        img.paste(layer, (x, y), layer)
        canvas[i] = np.asarray(img)
        boxes[i] = np.array([x, y, x + w, y + h], np.float32) / size
    scenes = _degrade(canvas, rng, style)
    for j in np.flatnonzero(rng.random(n) < style.letterbox):
        _letterbox(scenes[j], boxes[j], rng)
    return scenes, boxes
