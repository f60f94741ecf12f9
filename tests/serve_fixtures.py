"""Shared pieces of the serve tests: a synthetic catalog index with attributes, no TensorFlow."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks import embedding_tables
from core.catalog import Listing
from index import builder

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
    """Listings ``L00000000``.. (embedding_tables.listing_id) with seeded attributes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_listings):
        out.append(
            Listing(
                listing_id=embedding_tables.listing_id(i),
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
    table = embedding_tables.embedding_table(vectors, images_per_listing, version)
    settings = builder.IndexSettings(
        factory=factory,
        shards=shards,
        pca_dim=vectors.shape[1],
        validation_queries=200,
        latency_queries=20,
    )
    return builder.build_index(
        embedding_tables.batches_factory(table), settings, out_dir, version, build_id
    )


# ------------------------------------------------------------------ a served workdir (real model)

SERVE_DAY = "2026-01-01"
N_LISTINGS = 40
COLOR_NAMES = ("red", "blue", "green", "black")
SERVE_CATEGORIES = ("home/decor/vases", "home/lighting", "jewelry/rings", "art/prints")


def listing_rgb(i: int) -> tuple[int, int, int]:
    from tests.test_index_query import COLOURS

    return COLOURS[i]


def listing_attrs(i: int) -> dict[str, str | None]:
    return {
        "category": SERVE_CATEGORIES[i % 4],
        "color": COLOR_NAMES[(i // 4) % 4],
        "shape": "round" if i % 2 else "square",
        "material": None if i % 5 == 0 else "wood",
    }


def write_catalog(catalog: str) -> None:
    """A one-day snapshot: listing i has one PNG of colour i; its review photo is a JPEG of a
    nearby colour at another size (a shopper's photo of the same thing)."""
    import json
    import os

    from tests.test_index_query import photo

    day = os.path.join(catalog, f"dt={SERVE_DAY}")
    os.makedirs(os.path.join(catalog, "img"), exist_ok=True)
    os.makedirs(day, exist_ok=True)
    with (
        open(os.path.join(day, "listings.jsonl"), "w") as lf,
        open(os.path.join(day, "reviews.jsonl"), "w") as rf,
    ):
        for i in range(N_LISTINGS):
            lid = embedding_tables.listing_id(i)
            with open(os.path.join(catalog, "img", f"{i}.png"), "wb") as f:
                f.write(photo(listing_rgb(i), "PNG"))
            r, g, b = listing_rgb(i)
            near = (min(255, r + 6), max(0, g - 5), min(255, b + 4))
            with open(os.path.join(catalog, "img", f"r{i}.jpg"), "wb") as f:
                f.write(photo(near, "JPEG", size=72))
            row = {"listing_id": lid, "image_uris": [f"img/{i}.png"], "title": f"thing {i}"}
            lf.write(json.dumps({**row, **listing_attrs(i)}) + "\n")
            review = {"review_id": f"R{i:04d}", "listing_id": lid, "image_uri": f"img/r{i}.jpg"}
            rf.write(json.dumps(review) + "\n")


def catalog_embeddings(workdir: str) -> np.ndarray:
    """The model's embeddings of the catalog photos (as the embed stage would compute them)."""
    import tensorflow as tf

    from core import images, paths
    from tests.test_index_query import VERSION, photo

    model = tf.saved_model.load(paths.embedder_dir(workdir, VERSION)).signatures["serving_default"]
    clean = [
        images.encode_png(images.decode_image(photo(listing_rgb(i)), 32)) for i in range(N_LISTINGS)
    ]
    return np.asarray(model(images=tf.constant(clean))["embedding"].numpy())


def build_and_publish(
    workdir: str,
    catalog: str,
    build_id: str,
    emb: np.ndarray,
    keep: int = N_LISTINGS,
    shards: int = 2,
    before_publish: Callable[[str], None] | None = None,
) -> str:
    """Index the first ``keep`` listings as build ``build_id``, record its run, publish it.
    ``before_publish(manifest_uri)`` runs between the build and the publish (a server polling
    the pointer must never see the build before it)."""
    import os

    import pyarrow as pa

    from core import paths, runs
    from index import publish
    from tests.test_index_query import VERSION

    table = embedding_tables.embedding_table(emb[:keep], 1, VERSION)
    uris = [os.path.join(catalog, "img", f"{i}.png") for i in range(keep)]
    table = table.set_column(
        table.schema.get_field_index("image_uri"), "image_uri", pa.array(uris, pa.string())
    )
    settings = builder.IndexSettings(
        factory="Flat", shards=shards, validation_queries=8, latency_queries=5
    )
    out = paths.index_build_dir(workdir, VERSION, build_id)
    result = builder.build_index(
        embedding_tables.batches_factory(table), settings, out, VERSION, build_id
    )
    summary = runs.RunSummary(
        "build-index", SERVE_DAY, keep, keep, 0, wall_s=1.5, extra={"build_id": build_id}
    )
    runs.write_summary(workdir, summary, echo=False)
    if before_publish is not None:
        before_publish(result.manifest_uri)
    publish.publish(workdir, result.manifest_uri)
    return result.manifest_uri


def make_served_workdir(root: str) -> tuple[str, str, np.ndarray]:
    """(workdir with a tiny model and a published index, catalog, catalog embeddings)."""
    import os

    from tests.test_index_query import save_tiny_model

    workdir, catalog = os.path.join(root, "work"), os.path.join(root, "catalog")
    write_catalog(catalog)
    save_tiny_model(workdir)
    emb = catalog_embeddings(workdir)
    build_and_publish(workdir, catalog, "20260101T000000Z-aaaaaa", emb)
    return workdir, catalog, emb


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a thread: ``with LiveServer(app) as url: ...``."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_ready(url: str, build_id: str | None = None, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    """Poll /readyz until an index (``build_id`` if given) is served; returns the body."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    body: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/readyz", timeout=10)
        body = r.json()
        if r.status_code == 200 and (build_id is None or body["index"]["build_id"] == build_id):
            return body
        time.sleep(0.05)
    raise AssertionError(f"not ready with {build_id}: {body}")
