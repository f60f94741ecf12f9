"""Synthetic products: drawing a listing's parameters (``spec.ProductSpec``) and its picture as an RGBA layer.

A product is one unique draw of: category (a distinct silhouette), named colour with a jittered
exact hue, a surface (solid, stripes, dots, checks, wood, fabric), a shape label (tall/short/wide)
with jittered proportions, a structural variant (handle or not, dome or cone...) and an accent
colour. Many listings share category and colour, so telling two listings apart needs the fine
detail (hue, pattern scale/phase/angle, proportions), which is what retrieval is measured on.

Drawing is PIL (silhouette masks, ``silhouettes``) + numpy (texture, cylindrical shading), on a square canvas at
twice the photo size so that photos downsample it with anti-aliasing.
"""

from __future__ import annotations

import colorsys
from dataclasses import replace

import numpy as np
from PIL import Image

from synthetic import silhouettes
from synthetic.spec import ProductSpec

# (taxonomy path, what the variant flag means for this category). Order is fixed: a listing's
# category is an index into this tuple, so reordering would change every generated catalog.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("home/kitchen/mug", "contrasting rim"),
    ("home/decor/vase", "two handles"),
    ("home/lighting/lamp", "dome shade"),
    ("home/furniture/chair", "armrests"),
    ("home/kitchen/bottle", "cork stopper"),
    ("accessories/bags/bag", "top handle"),
    ("clothing/tops/shirt", "long sleeves"),
    ("accessories/hats/hat", "ribbon band"),
    ("clothing/shoes/shoe", "high top"),
    ("home/decor/clock", "square case"),
    ("home/kitchen/teapot", "tall knob"),
    ("home/kitchen/bowl", "foot ring"),
)

# name -> (hue, saturation, value) centre; jitter widths below. Black/white/gray are achromatic:
# their hue barely matters, their value is what defines them.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.995, 0.80, 0.80),
    "orange": (0.075, 0.85, 0.95),
    "yellow": (0.145, 0.80, 0.95),
    "green": (0.33, 0.65, 0.60),
    "blue": (0.60, 0.75, 0.75),
    "purple": (0.77, 0.55, 0.60),
    "pink": (0.93, 0.40, 0.95),
    "brown": (0.07, 0.65, 0.45),
    "black": (0.60, 0.05, 0.13),
    "white": (0.10, 0.04, 0.95),
    "gray": (0.60, 0.04, 0.55),
}
ACHROMATIC = ("black", "white", "gray")

MATERIALS: tuple[str, ...] = ("solid", "striped", "dotted", "checked", "wood", "fabric")
SHAPES: tuple[str, ...] = ("tall", "short", "wide")
# Height/width range of each category's box; the shape label picks the high, middle or low end,
# so a "tall" bowl is still a bowl and a "wide" bottle still a bottle.
_ASPECT = {
    "mug": (0.8, 1.5), "vase": (1.0, 2.0), "lamp": (1.1, 1.9), "chair": (1.0, 1.7),
    "bottle": (1.3, 2.4), "bag": (0.6, 1.1), "shirt": (0.9, 1.3), "hat": (0.45, 0.9),
    "shoe": (0.4, 0.7), "clock": (0.85, 1.15), "teapot": (0.7, 1.1), "bowl": (0.35, 0.6),
}  # fmt: skip
_SHAPE_AT = {"tall": 0.85, "short": 0.5, "wide": 0.15}

# Popularity skew: real catalogs are dominated by a few categories and colours, which is what makes
# "same category, same colour" neighbours plentiful and retrieval fine-grained.
_CATEGORY_WEIGHTS = np.array([14, 10, 8, 7, 8, 9, 12, 7, 9, 5, 5, 6], dtype=float)
_COLOR_WEIGHTS = np.array([10, 6, 5, 8, 11, 5, 6, 8, 12, 11, 8], dtype=float)
_MATERIAL_WEIGHTS = np.array([30, 18, 14, 12, 13, 13], dtype=float)

_ADJECTIVES = ("Handmade", "Vintage", "Modern", "Classic", "Rustic", "Minimal", "Retro", "Cozy")


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return (r, g, b)


def jittered_rgb(color: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """The named colour with a listing-specific exact hue, saturation and value."""
    h, s, v = COLORS[color]
    if color in ACHROMATIC:
        return _hsv(
            h + rng.uniform(-0.2, 0.2), s + rng.uniform(-0.04, 0.03), v + rng.uniform(-0.07, 0.05)
        )
    return _hsv(
        h + rng.uniform(-0.025, 0.025), s + rng.uniform(-0.15, 0.12), v + rng.uniform(-0.15, 0.07)
    )


def _accent(
    color: str, material: str, rgb: tuple[float, float, float], rng: np.random.Generator
) -> tuple[float, float, float]:
    """A secondary colour that never outweighs the main one (so the colour label stays true)."""
    main = np.array(rgb)
    if material == "checked":  # gingham: a tint of the main colour
        return tuple(main * 0.45 + 0.55 * (1.0 if rng.random() < 0.7 else 0.1))  # type: ignore[return-value]
    pick = rng.random()
    if pick < 0.35:
        other = (0.96, 0.95, 0.92)  # cream / white
    elif pick < 0.6:
        other = (0.10, 0.10, 0.11)
    elif pick < 0.8:
        other = tuple(main * 0.5)  # type: ignore[assignment]
    else:
        names = [c for c in COLORS if c != color]
        other = jittered_rgb(names[int(rng.integers(len(names)))], rng)
    if color == "white" and pick < 0.35:
        other = (0.55, 0.55, 0.58)
    if color == "black" and 0.35 <= pick < 0.8:
        other = (0.85, 0.85, 0.85)
    return tuple(float(x) for x in other)  # type: ignore[return-value]


def sample_spec(rng: np.random.Generator) -> ProductSpec:
    """One listing's product; every call on a fresh rng with the same seed gives the same spec."""
    cat = int(rng.choice(len(CATEGORIES), p=_CATEGORY_WEIGHTS / _CATEGORY_WEIGHTS.sum()))
    names = list(COLORS)
    color = names[int(rng.choice(len(names), p=_COLOR_WEIGHTS / _COLOR_WEIGHTS.sum()))]
    material = MATERIALS[
        int(rng.choice(len(MATERIALS), p=_MATERIAL_WEIGHTS / _MATERIAL_WEIGHTS.sum()))
    ]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    rgb = jittered_rgb(color, rng)
    category = CATEGORIES[cat][0]
    noun = category.rsplit("/", 1)[-1]
    lo, hi = _ASPECT[noun]
    aspect = lo + (hi - lo) * float(np.clip(_SHAPE_AT[shape] + rng.uniform(-0.12, 0.12), 0, 1))
    extent = rng.uniform(0.72, 0.88)  # the longer side, as a fraction of the canvas
    box = (extent / aspect, extent) if aspect >= 1 else (extent, extent * aspect)
    period = {
        "striped": (0.06, 0.16),
        "dotted": (0.07, 0.14),
        "checked": (0.06, 0.14),
        "wood": (0.03, 0.07),
        "fabric": (0.015, 0.03),
        "solid": (0.1, 0.1),
    }[material]
    words = [_ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]]
    if rng.random() < 0.6:
        words.append(color)
    if material != "solid" and rng.random() < 0.6:
        words.append(material)
    words.append(noun)
    return ProductSpec(
        category=category,
        color=color,
        material=material,
        shape=shape,
        variant=bool(rng.random() < 0.5),
        rgb=rgb,
        accent=_accent(color, material, rgb, rng),
        box=box,
        pattern_period=float(rng.uniform(*period)),
        pattern_phase=float(rng.uniform(0, 1)),
        pattern_angle=float(rng.choice([0.0, np.pi / 2, rng.uniform(-0.6, 0.6)])),
        gloss=float(
            rng.uniform(0.0, 0.3) if material in ("fabric", "wood") else rng.uniform(0.2, 0.8)
        ),
        detail_seed=int(rng.integers(2**31)),
        title=" ".join(w.capitalize() if i == 0 else w for i, w in enumerate(words)),
    )


def variant_of(parent: ProductSpec, rng: np.random.Generator, recolour: bool) -> ProductSpec:
    """The same product listed again: in another colour ("also available in blue"), or by another
    seller in nearly the same look (a near-duplicate: only hue, pattern phase and size differ).
    Both make the nearest wrong answer very near, as on a real marketplace."""
    if recolour:
        color = [c for c in COLORS if c != parent.color][int(rng.integers(len(COLORS) - 1))]
        rgb = jittered_rgb(color, rng)
        return replace(
            parent,
            color=color,
            rgb=rgb,
            accent=_accent(color, parent.material, rgb, rng),
            title=parent.title.replace(parent.color, color),
        )
    box = (parent.box[0] * rng.uniform(0.94, 1.06), parent.box[1] * rng.uniform(0.94, 1.06))
    return replace(
        parent,
        rgb=jittered_rgb(parent.color, rng),
        box=box,
        pattern_phase=float(rng.uniform(0, 1)),
        detail_seed=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------- surfaces


def _value_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] of shape (n, n): a coarse grid upsampled bilinearly."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((n, n), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def surface(spec: ProductSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """The product's main surface (n x n x 3 float32 in 0..1): colour times pattern."""
    main = np.array(spec.rgb, dtype=np.float32)
    acc = np.array(spec.accent, dtype=np.float32)
    xx = np.arange(n, dtype=np.float32)[None, :] / n
    yy = np.arange(n, dtype=np.float32)[:, None] / n
    ca, sa = np.float32(np.cos(spec.pattern_angle)), np.float32(np.sin(spec.pattern_angle))
    u = (xx * ca + yy * sa) / spec.pattern_period + spec.pattern_phase
    v = (-xx * sa + yy * ca) / spec.pattern_period + spec.pattern_phase
    out: np.ndarray = np.broadcast_to(main, (n, n, 3)).copy()
    m = spec.material
    if m == "striped":
        duty = 0.25 + 0.15 * spec.pattern_phase
        out[(u % 1.0) < duty] = acc
    elif m == "dotted":
        du, dv = (u % 1.0) - 0.5, (v % 1.0) - 0.5
        out[du * du + dv * dv < 0.06 + 0.04 * spec.pattern_phase] = acc
    elif m == "checked":
        band_u, band_v = (u % 1.0) < 0.5, (v % 1.0) < 0.5
        # gingham: where bands cross the accent is strongest
        mix = (band_u.astype(np.float32) + band_v.astype(np.float32))[..., None] * np.float32(0.3)
        out = main * (1 - mix) + acc * mix
    elif m == "wood":
        warp = _value_noise(rng, n, 5) * 3.0
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (u + warp))
        fine = _value_noise(rng, n, 48)
        out = main * (0.72 + 0.3 * grain[..., None] + 0.1 * fine[..., None])
    elif m == "fabric":
        weave = (
            0.5
            + 0.25 * np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v)
            + 0.25 * np.sin(2 * np.pi * (u + v) * 0.5)
        )
        fuzz = _value_noise(rng, n, 64)
        out = main * (0.82 + 0.16 * weave[..., None] + 0.1 * fuzz[..., None])
    else:
        out = main * (0.97 + 0.06 * _value_noise(rng, n, 6)[..., None])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _cylinder_shading(alpha: np.ndarray, gloss: float) -> np.ndarray:
    """Per-row shading as if each row were a lit cylinder: darker edges, a highlight left of centre."""
    n = alpha.shape[1]
    inside = alpha > 0.5
    has = inside.any(axis=1)
    left = np.where(has, inside.argmax(axis=1), 0).astype(np.float32)
    right = np.where(has, n - 1 - inside[:, ::-1].argmax(axis=1), n - 1).astype(np.float32)
    x = np.arange(n, dtype=np.float32)[None, :]
    t = np.clip((x - left[:, None]) / np.maximum(right - left, 1.0)[:, None], 0.0, 1.0)
    body = np.float32(0.62) + np.float32(0.42) * np.sqrt(
        np.clip(np.sin(np.float32(np.pi) * t), 0, 1)
    )
    highlight = np.float32(gloss * 0.45) * np.exp(
        -(((t - np.float32(0.3)) / np.float32(0.07)) ** 2)
    )
    return (body + highlight).astype(np.float32)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by r pixels along both axes (cheap numpy shifts, no rank filter)."""
    out = mask.copy()
    out[r:, :] &= mask[:-r, :]
    out[:-r, :] &= mask[r:, :]
    out[:, r:] &= mask[:, :-r]
    out[:, :-r] &= mask[:, r:]
    return out


def draw_product(spec: ProductSpec, canvas: int) -> np.ndarray:
    """The product alone, centred, as an RGBA float32 array (canvas x canvas x 4, 0..1)."""
    m = silhouettes.draw_masks(spec, canvas)
    rng = np.random.default_rng(spec.detail_seed)
    alpha = m["main"] | m["accent"] | m["light"] | m["dark"]
    rgb = surface(spec, canvas, rng)
    # Later kinds paint over earlier ones: dark details on light faces on accents on the body.
    rgb[m["accent"]] = spec.accent
    rgb[m["light"]] = (0.93, 0.92, 0.89)
    rgb[m["dark"]] = (0.08, 0.08, 0.09)
    light = _cylinder_shading(alpha, spec.gloss)
    # A darker rim gives light objects an edge against light backgrounds, as real photos have.
    light[alpha & ~_erode(alpha, 2)] *= 0.65
    out = np.empty((canvas, canvas, 4), dtype=np.float32)
    np.multiply(rgb, light[..., None], out=out[..., :3])
    np.clip(out[..., :3], 0.0, 1.0, out=out[..., :3])
    out[..., 3] = alpha
    return out


assert set(silhouettes.NOUNS) == {c.rsplit("/", 1)[-1] for c, _ in CATEGORIES}
