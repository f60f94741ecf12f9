"""Product silhouettes: one small drawing function per category, in a unit box.

Each function paints masks of four surface kinds (the textured body, an accent part, a light
face, dark details) with PIL; ``products.draw_product`` turns the masks into a shaded picture.
Coordinates are fractions of the product's box, so proportions come from the spec alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from synthetic.spec import ProductSpec

KINDS = ("main", "accent", "light", "dark")  # later kinds paint over earlier ones


@dataclass
class _Parts:
    """One mask per surface kind; drawers paint 255 where a part is."""

    main: ImageDraw.ImageDraw
    accent: ImageDraw.ImageDraw
    light: ImageDraw.ImageDraw
    dark: ImageDraw.ImageDraw


@dataclass(frozen=True)
class _Box:
    x0: float
    y0: float
    w: float
    h: float

    def p(self, u: float, v: float) -> tuple[float, float]:
        """A point at fractions (u, v) of the box."""
        return (self.x0 + u * self.w, self.y0 + v * self.h)

    def r(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        return [*self.p(u0, v0), *self.p(u1, v1)]


def _profile(b: _Box, ts: list[float], rs: list[float], n: int = 40) -> list[tuple[float, float]]:
    """A solid of revolution seen from the side: half-widths ``rs`` (fraction of the box width)
    at heights ``ts`` (0 top .. 1 bottom), smoothly interpolated, mirrored about the centre."""
    t = np.linspace(ts[0], ts[-1], n)
    r = np.interp(t, ts, rs)
    r = np.convolve(np.pad(r, 2, mode="edge"), np.ones(5) / 5, mode="valid")  # soften the corners
    right = [b.p(0.5 + ri, ti) for ti, ri in zip(t, r, strict=True)]
    left = [b.p(0.5 - ri, ti) for ti, ri in zip(t[::-1], r[::-1], strict=True)]
    return right + left


def _mug(d: _Parts, b: _Box, s: ProductSpec) -> None:
    lw = max(2, int(b.w * 0.09))
    d.main.ellipse(b.r(0.62, 0.22, 1.0, 0.72), outline=255, width=lw)
    d.main.rounded_rectangle(b.r(0.0, 0.05, 0.78, 1.0), radius=b.w * 0.08, fill=255)
    d.light.ellipse(b.r(0.02, 0.0, 0.76, 0.1), fill=255)
    if s.variant:
        d.accent.rectangle(b.r(0.0, 0.05, 0.78, 0.16), fill=255)


def _vase(d: _Parts, b: _Box, s: ProductSpec) -> None:
    d.main.polygon(
        _profile(b, [0, 0.05, 0.3, 0.6, 0.9, 1], [0.2, 0.14, 0.15, 0.42, 0.3, 0.22]), fill=255
    )
    if s.variant:
        lw = max(2, int(b.w * 0.05))
        d.main.arc(b.r(0.1, 0.1, 0.4, 0.45), 90, 270, fill=255, width=lw)
        d.main.arc(b.r(0.6, 0.1, 0.9, 0.45), 270, 90, fill=255, width=lw)
    d.dark.ellipse(b.r(0.33, 0.0, 0.67, 0.04), fill=255)


def _lamp(d: _Parts, b: _Box, s: ProductSpec) -> None:
    d.accent.rectangle(b.r(0.47, 0.35, 0.53, 0.95), fill=255)
    d.accent.ellipse(b.r(0.25, 0.9, 0.75, 1.0), fill=255)
    if s.variant:
        d.main.pieslice(b.r(0.05, 0.0, 0.95, 0.8), 180, 360, fill=255)
    else:
        d.main.polygon([b.p(0.25, 0.0), b.p(0.75, 0.0), b.p(0.98, 0.42), b.p(0.02, 0.42)], fill=255)


def _chair(d: _Parts, b: _Box, s: ProductSpec) -> None:
    leg = 0.07
    for u in (0.05, 0.83):
        d.accent.rectangle(b.r(u, 0.55, u + leg, 1.0), fill=255)
    d.accent.rectangle(b.r(0.05, 0.85, 0.9, 0.88), fill=255)
    d.main.rounded_rectangle(b.r(0.02, 0.5, 0.98, 0.6), radius=b.h * 0.02, fill=255)
    d.main.rounded_rectangle(b.r(0.72, 0.0, 0.9, 0.55), radius=b.w * 0.04, fill=255)
    if s.variant:
        d.main.rectangle(b.r(0.1, 0.3, 0.8, 0.36), fill=255)
        d.accent.rectangle(b.r(0.12, 0.33, 0.17, 0.52), fill=255)


def _bottle(d: _Parts, b: _Box, s: ProductSpec) -> None:
    neck = 0.16 if s.variant else 0.1
    d.main.polygon(_profile(b, [0.1, 0.3, 0.45, 0.55, 1], [neck, neck, 0.4, 0.42, 0.4]), fill=255)
    if s.variant:
        d.accent.rectangle(b.r(0.5 - neck * 0.9, 0.0, 0.5 + neck * 0.9, 0.12), fill=255)
    else:
        d.dark.rectangle(b.r(0.5 - neck * 1.1, 0.02, 0.5 + neck * 1.1, 0.12), fill=255)
    d.light.rectangle(b.r(0.12, 0.6, 0.88, 0.82), fill=255)  # a label


def _bag(d: _Parts, b: _Box, s: ProductSpec) -> None:
    lw = max(2, int(b.w * 0.05))
    if s.variant:
        d.accent.arc(b.r(0.25, 0.0, 0.75, 0.6), 180, 360, fill=255, width=lw)
    else:
        d.accent.line(
            [b.p(0.1, 0.35), b.p(0.5, 0.0), b.p(0.9, 0.35)], fill=255, width=max(1, lw // 2)
        )
    d.main.polygon([b.p(0.08, 0.3), b.p(0.92, 0.3), b.p(1.0, 1.0), b.p(0.0, 1.0)], fill=255)
    d.main.chord(b.r(0.08, 0.12, 0.92, 0.65), 0, 180, fill=255)
    d.dark.ellipse(b.r(0.46, 0.55, 0.54, 0.61), fill=255)


def _shirt(d: _Parts, b: _Box, s: ProductSpec) -> None:
    sl = 0.75 if s.variant else 0.38
    d.main.polygon(
        [
            b.p(0.36, 0.0),
            b.p(0.64, 0.0),
            b.p(1.0, 0.14),
            b.p(1.0, sl * 0.9),
            b.p(0.8, sl),
            b.p(0.78, 0.3),
            b.p(0.8, 1.0),
            b.p(0.2, 1.0),
            b.p(0.22, 0.3),
            b.p(0.2, sl),
            b.p(0.0, sl * 0.9),
            b.p(0.0, 0.14),
        ],
        fill=255,
    )
    d.light.chord(b.r(0.38, -0.08, 0.62, 0.1), 0, 180, fill=255)


def _hat(d: _Parts, b: _Box, s: ProductSpec) -> None:
    d.main.ellipse(b.r(0.0, 0.72, 1.0, 0.98), fill=255)
    top = {"tall": 0.0, "short": 0.15, "wide": 0.3}[s.shape]
    radius = b.w * (0.05 if s.shape == "tall" else 0.2)  # a top hat vs a dome
    d.main.rounded_rectangle(b.r(0.22, top, 0.78, 0.88), radius=radius, fill=255)
    if s.variant:
        d.accent.rectangle(b.r(0.22, 0.68, 0.78, 0.78), fill=255)


def _shoe(d: _Parts, b: _Box, s: ProductSpec) -> None:
    top = 0.05 if s.variant else 0.35
    d.main.polygon(
        [
            b.p(0.02, top),
            b.p(0.3, top),
            b.p(0.42, 0.5),
            b.p(0.85, 0.58),
            b.p(1.0, 0.8),
            b.p(1.0, 0.88),
            b.p(0.0, 0.88),
        ],
        fill=255,
    )
    d.light.rounded_rectangle(b.r(0.0, 0.82, 1.0, 1.0), radius=b.h * 0.05, fill=255)
    d.dark.line([b.p(0.3, 0.45), b.p(0.5, 0.55)], fill=255, width=max(1, int(b.w * 0.015)))


def _clock(d: _Parts, b: _Box, s: ProductSpec) -> None:
    side = min(b.w, b.h)
    sq = _Box(b.x0 + (b.w - side) / 2, b.y0 + (b.h - side) / 2, side, side)
    if s.variant:
        d.main.rounded_rectangle(sq.r(0, 0, 1, 1), radius=side * 0.1, fill=255)
    else:
        d.main.ellipse(sq.r(0, 0, 1, 1), fill=255)
    d.light.ellipse(sq.r(0.14, 0.14, 0.86, 0.86), fill=255)
    lw = max(1, int(side * 0.03))
    d.dark.line([sq.p(0.5, 0.5), sq.p(0.5, 0.24)], fill=255, width=lw)
    d.dark.line([sq.p(0.5, 0.5), sq.p(0.7, 0.6)], fill=255, width=lw)
    for k in range(12):
        a = k * np.pi / 6
        d.dark.point([sq.p(0.5 + 0.31 * np.cos(a), 0.5 + 0.31 * np.sin(a))], fill=255)


def _teapot(d: _Parts, b: _Box, s: ProductSpec) -> None:
    lw = max(2, int(b.w * 0.06))
    d.main.ellipse(b.r(0.7, 0.3, 0.98, 0.75), outline=255, width=lw)
    d.main.polygon([b.p(0.25, 0.55), b.p(0.02, 0.22), b.p(0.08, 0.2), b.p(0.32, 0.7)], fill=255)
    d.main.ellipse(b.r(0.15, 0.25, 0.85, 1.0), fill=255)
    d.accent.chord(b.r(0.32, 0.17, 0.68, 0.37), 180, 360, fill=255)
    knob = 0.02 if s.variant else 0.12
    d.accent.ellipse(b.r(0.45, knob, 0.55, 0.22), fill=255)


def _bowl(d: _Parts, b: _Box, s: ProductSpec) -> None:
    foot = 0.85 if s.variant else 1.0
    d.main.chord(b.r(0.0, 0.2 - foot, 1.0, foot), 0, 180, fill=255)  # body below the rim
    d.main.ellipse(b.r(0.0, 0.0, 1.0, 0.2), fill=255)  # the rim, seen slightly from above
    d.light.ellipse(b.r(0.03, 0.025, 0.97, 0.175), fill=255)
    if s.variant:
        d.main.rectangle(b.r(0.36, 0.8, 0.64, 1.0), fill=255)


_DRAWERS: dict[str, Callable[[_Parts, _Box, ProductSpec], None]] = {
    "mug": _mug,
    "vase": _vase,
    "lamp": _lamp,
    "chair": _chair,
    "bottle": _bottle,
    "bag": _bag,
    "shirt": _shirt,
    "hat": _hat,
    "shoe": _shoe,
    "clock": _clock,
    "teapot": _teapot,
    "bowl": _bowl,
}
NOUNS = tuple(_DRAWERS)


def draw_masks(spec: ProductSpec, canvas: int) -> dict[str, np.ndarray]:
    """Boolean masks (canvas x canvas) of each surface kind of the product, centred."""
    masks = {k: Image.new("L", (canvas, canvas), 0) for k in KINDS}
    parts = _Parts(**{k: ImageDraw.Draw(im) for k, im in masks.items()})
    bw, bh = spec.box[0] * canvas, spec.box[1] * canvas
    _DRAWERS[spec.noun](parts, _Box((canvas - bw) / 2, (canvas - bh) / 2, bw, bh), spec)
    # PIL draws these masks without anti-aliasing, so they are exactly 0 or 255.
    return {k: np.asarray(im) > 127 for k, im in masks.items()}
