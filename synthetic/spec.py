"""What one synthetic product is (``ProductSpec``): the parameters every picture of it is drawn
from. Its own module so that both ``products`` (which draws specs and paints them) and
``silhouettes`` (which outlines them) can read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductSpec:
    """Everything that defines one listing's product; photos are renders of it."""

    category: str
    color: str
    material: str
    shape: str
    variant: bool
    rgb: tuple[float, float, float]  # the jittered exact main colour, 0..1
    accent: tuple[float, float, float]  # pattern / secondary-part colour
    box: tuple[float, float]  # (width, height) fraction of the canvas
    pattern_period: float  # fraction of the canvas
    pattern_phase: float
    pattern_angle: float  # radians
    gloss: float  # 0 matte .. 1 glossy highlight
    detail_seed: int  # small drawing details (wood grain, fabric noise)
    title: str

    @property
    def noun(self) -> str:
        return self.category.rsplit("/", 1)[-1]
