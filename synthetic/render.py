"""Rendering one listing's new files: runs in worker processes, a pure function of its task.

Every random draw comes from ``numpy.random.default_rng([seed, listing, STREAM, ...])``, so a
listing's product and photos do not depend on which process renders them, or in what order.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from synthetic import photos, products
from synthetic.spec import ProductSpec

NULL_FRACTION = 0.10  # each of color/shape/material is missing this often, independently
# A listing is sometimes another listing's product again: recoloured, or a near-duplicate.
RECOLOUR_FRACTION = 0.08
NEAR_DUPLICATE_FRACTION = 0.04
VARIANT_LOOKBACK = 200  # the parent is one of the previous listings (the same seller's shop)

# Stream ids for default_rng([seed, listing, STREAM, ...]): one per purpose, never reused.
SPEC, STUDIO, REVIEW, CORRUPT, CLOCK = 0, 1, 2, 3, 4


def listing_id(num: int) -> str:
    return f"L{num:06d}"


def review_id(num: int, k: int) -> str:
    return f"R{num:06d}-{k}"


@dataclass(frozen=True)
class Meta:
    """A listing's catalog fields, drawn once from its own seed."""

    spec: ProductSpec
    color: str | None
    shape: str | None
    material: str | None
    initial_reviews: int


def listing_meta(seed: int, num: int) -> Meta:
    rng = np.random.default_rng([seed, num, SPEC])
    spec = products.sample_spec(rng)
    kind = rng.random()
    if num > 0 and kind < RECOLOUR_FRACTION + NEAR_DUPLICATE_FRACTION:
        parent = int(rng.integers(max(0, num - VARIANT_LOOKBACK), num))
        spec = products.variant_of(
            listing_meta(seed, parent).spec, rng, recolour=kind < RECOLOUR_FRACTION
        )
    nulls = rng.random(3) < NULL_FRACTION
    reviews = int(rng.choice(4, p=[0.15, 0.35, 0.3, 0.2]))  # most listings 1-3, some none
    return Meta(
        spec=spec,
        color=None if nulls[0] else spec.color,
        shape=None if nulls[1] else spec.shape,
        material=None if nulls[2] else spec.material,
        initial_reviews=reviews,
    )


@dataclass(frozen=True)
class Task:
    num: int
    photo_version: int | None  # None: the studio photos are unchanged, do not render
    review_ks: tuple[int, ...]
    seed: int
    size: int
    corrupt_fraction: float


@dataclass
class Rendered:
    num: int
    studio: list[tuple[str, bytes]] = field(default_factory=list)  # (relative uri, bytes)
    # (k, relative uri, bytes, the product's true box in the photo)
    reviews: list[tuple[int, str, bytes, tuple[float, float, float, float]]] = field(
        default_factory=list
    )
    corrupt: int = 0


def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """A broken 'JPEG' of one of the kinds real catalogs hold."""
    kind = int(rng.integers(3))
    if kind == 0:
        return data[: max(1, len(data) // 3)]  # upload cut off
    if kind == 1:
        return b""
    return b"<html><body>404 Not Found</body></html>\n"  # an error page saved as .jpg


def render(task: Task) -> Rendered:
    meta = listing_meta(task.seed, task.num)
    # Two pixels of product per photo pixel, so photos shrink it with anti-aliasing.
    layer = photos.as_layer(products.draw_product(meta.spec, 2 * task.size))
    out = Rendered(task.num)
    lid = listing_id(task.num)
    if task.photo_version is not None:
        rng = np.random.default_rng([task.seed, task.num, STUDIO, task.photo_version])
        n = int(rng.choice([1, 2, 3, 4, 5], p=[0.2, 0.25, 0.25, 0.15, 0.15]))
        for i in range(n):
            data = photos.studio_photo(layer, task.size, rng, lifestyle_ok=i > 0)
            crng = np.random.default_rng([task.seed, task.num, CORRUPT, task.photo_version, i])
            if task.corrupt_fraction > 0 and crng.random() < task.corrupt_fraction:
                data = _corrupt(data, crng)
                out.corrupt += 1
            h = hashlib.sha256(data).hexdigest()[:8]
            out.studio.append((f"images/{lid}/{i}-{h}.jpg", data))
    for k in task.review_ks:
        rng = np.random.default_rng([task.seed, task.num, REVIEW, k])
        data, _, box = photos.review_photo(layer, task.size, rng)
        out.reviews.append((k, f"images/reviews/{review_id(task.num, k)}.jpg", data, box))
    return out


def render_all(tasks: list[Task], workers: int) -> Iterator[Rendered]:
    """Render in a process pool (numpy/PIL work is CPU bound); results in task order."""
    if workers <= 1 or len(tasks) < 32:
        yield from map(render, tasks)
        return
    ctx = multiprocessing.get_context("fork")  # workers need nothing but this module
    with ctx.Pool(workers) as pool:
        yield from pool.imap(render, tasks, chunksize=8)
