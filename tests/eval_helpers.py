"""Helpers for the human-evaluation tests: a rating task built from a generated catalog (no model
needed: results are drawn from the catalog), and the rating app on a real HTTP port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from core import paths
from vsearch.evaluation import sample
from vsearch.evaluation.task import Query, RatingTask, Result, query_id, write_task

DAY = "2026-01-01"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def catalog_task(
    catalog: str, workdir: str, models: tuple[str, ...], queries: int = 6, k: int = 4, seed: int = 0
) -> str:
    """A task whose results are other listings of the catalog, chosen by a seeded RNG."""
    pool = sample.candidates_of(catalog, DAY)
    listings = sorted({(c.listing_id, c.uri, c.category) for c in pool if c.kind == "listing"})
    drawn = sample.draw(pool, queries, seed, 0.5)
    rng = np.random.default_rng(seed)
    qs = []
    for i, c in enumerate(drawn):
        results = {}
        for v in models:
            pick = rng.choice(len(listings), size=k, replace=False)
            results[v] = [
                Result(listings[j][0], listings[j][1], 1.0 - n / 10, listings[j][2])
                for n, j in enumerate(pick)
            ]
        sides = (models if i % 2 else tuple(reversed(models))) if len(models) == 2 else ()
        qs.append(
            Query(
                query_id(c.uri), c.uri, c.kind, c.listing_id, c.category, c.category, results, sides
            )  # type: ignore[arg-type]
        )
    task = RatingTask(
        "test-task",
        "2026-01-01T00:00:00+00:00",
        workdir,
        catalog,
        DAY,
        k,
        seed,
        models,
        {v: "exact search" for v in models},
        qs,
    )
    uri = paths.eval_task(workdir, "test-task")
    write_task(uri, task)
    return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: object) -> Iterator[str]:
    """The app on a real uvicorn server in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the rating app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def photo(path: str, colour: tuple[int, int, int]) -> str:
    """A small solid-colour JPEG at ``path``; returns the path."""
    import os

    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (48, 48), colour).save(path, format="JPEG")
    return path


def hand_task(
    workdir: str,
    queries: list[Query],
    models: tuple[str, ...] = ("vA",),
    k: int = 3,
    task_id: str = "hand-task",
    catalog: str = "unused-catalog",
) -> str:
    """A task written from hand-made queries (figures a test can compute by hand)."""
    task = RatingTask(
        task_id,
        "2026-01-01T00:00:00+00:00",
        workdir,
        catalog,
        DAY,
        k,
        0,
        models,
        {v: "exact search" for v in models},
        queries,
    )
    uri = paths.eval_task(workdir, task_id)
    write_task(uri, task)
    return uri
