"""Shared pieces of the serve tests: a synthetic catalog index with attributes, no TensorFlow."""

from __future__ import annotations

import numpy as np

from index import builder, synthetic
from vsearch.core.catalog import Listing

CATEGORIES = ("home/decor", "home/lighting", "jewelry/rings", "art/prints", "homeware/mugs")
COLORS = ("red", "blue", "green", "black", "white", "pink", "gray", "brown")
MATERIALS = ("wood", "silver", "glass", None)
SHAPES = ("round", "square")


def clustered(n: int, dim: int, seed: int, centres: int = 200) -> np.ndarray:
    """DESIGN.md's ``clustered`` recipe at a small size (L2-normalised float32); the centres
    are the same for every ``seed``, so queries (another seed) fall among the database."""
    c = np.random.default_rng(0).standard_normal((centres, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def listings(n_listings: int, seed: int = 3) -> list[Listing]:
    """Listings ``L00000000``.. (synthetic.listing_id) with seeded attributes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_listings):
        out.append(
            Listing(
                listing_id=synthetic.listing_id(i),
                image_uris=(f"mem://images/{i}/0.jpg",),
                title=f"listing {i}",
                category=CATEGORIES[int(rng.integers(len(CATEGORIES)))],
                color=COLORS[int(rng.integers(len(COLORS)))],
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                material=MATERIALS[int(rng.integers(len(MATERIALS)))],
            )
        )
    return out


def build(
    vectors: np.ndarray,
    out_dir: str,
    version: str,
    build_id: str,
    images_per_listing: int,
    factory: str,
    shards: int,
) -> builder.BuildResult:
    table = synthetic.embedding_table(vectors, images_per_listing, version)
    settings = builder.IndexSettings(
        factory=factory,
        shards=shards,
        pca_dim=vectors.shape[1],
        validation_queries=200,
        latency_queries=20,
    )
    return builder.build_index(
        synthetic.batches_factory(table), settings, out_dir, version, build_id
    )
