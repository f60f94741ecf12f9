"""Hot swap on a real uvicorn server: a publish under load is served with no failed request,
in-flight requests finish on the index they started on, and a corrupt index is refused while
the old one keeps serving."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest

from core import paths, pointers, storage
from index import publish
from index.publish import PublishError
from tests import serve_fixtures as fx
from tests.test_index_query import VERSION, photo
from vsearch.serve.app import create_app
from vsearch.serve.command import ServeSettings
from vsearch.serve.filters import Filter
from vsearch.serve.holder import IndexHolder, LoadOptions, load_index

FIRST = "20260101T000000Z-aaaaaa"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, np.ndarray]:
    return fx.make_served_workdir(str(tmp_path_factory.mktemp("swap")))


def jpeg(i: int) -> bytes:
    return photo(fx.listing_rgb(i), "JPEG", size=80)


def test_in_flight_request_finishes_on_the_old_index(served: tuple[str, str, np.ndarray]) -> None:
    workdir, catalog, emb = served
    holder = IndexHolder(
        workdir,
        lambda uri, previous: load_index(
            uri, LoadOptions(workdir, catalog, calibration_photos=0), previous
        ),
        poll_s=60,
        listener=lambda *_: None,
    )
    assert holder.check_once() == "swapped"
    # The loaded model and index are moved out of the cyclic collector's sight, so that its
    # automatic full collections no longer pause every request (benchmarks/serve_bench.py).
    assert gc.get_freeze_count() > 0
    closed: list[str] = []
    with holder.use() as old:
        real_close = old.close
        old.close = lambda: (closed.append(old.build_id), real_close())  # type: ignore[method-assign]
        fx.build_and_publish(workdir, catalog, "20260101T000001Z-bbbbbb", emb, keep=30)
        assert holder.check_once() == "swapped"
        assert holder.current is not None and holder.current.build_id == "20260101T000001Z-bbbbbb"
        # Same model version: the new index shares the loaded model (no second SavedModel load).
        assert holder.current.photos.embedder is old.photos.embedder
        # The request that took the old index still searches it (listing 35 is only there).
        whole = old.photos.embed_views([jpeg(35)])[0][:, 0]  # the whole photo's vector
        found, _ = old.search.search(whole, 1, Filter())
        assert old.build_id == FIRST and found[0][0].listing_id == fx.embedding_tables.listing_id(
            35
        )
        assert closed == []  # not closed under the request
    assert closed == [FIRST]  # closed when the last request using it finished
    # Frozen objects are never collected: the next swap must still free the retired index even
    # when its objects hold each other in a cycle (a restored SavedModel's do), or each swap
    # would leak one.
    old.cycle = old  # type: ignore[attr-defined]
    retired = weakref.ref(old)
    old = real_close = None  # type: ignore[assignment]  # the test's own references
    fx.build_and_publish(workdir, catalog, "20260101T000001Z-bbbbbc", emb, keep=30)
    assert holder.check_once() == "swapped"
    assert retired() is None
    holder.stop()


def corrupt(manifest_uri: str) -> None:
    """Flip bytes in the middle of shard 0 (same size: only the checksum can tell)."""
    shard = os.path.join(storage.parent(manifest_uri), "shard-00000.faiss")
    data = bytearray(Path(shard).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    Path(shard).write_bytes(bytes(data))


async def load(url: str, requests: int, clients: int, publish_at: int, publish) -> list:  # type: ignore[no-untyped-def,type-arg]
    """``requests`` searches from ``clients`` concurrent clients; ``publish()`` runs (in a
    thread) once ``publish_at`` requests are done. Returns (status, build_id) per request."""
    out: list[tuple[int, str | None]] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    published: asyncio.Task | None = None  # type: ignore[type-arg]

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal published
        while not queue.empty():
            i = queue.get_nowait()
            if i == publish_at:
                published = asyncio.create_task(asyncio.to_thread(publish))
            r = await c.post(
                "/search?k=5", content=jpeg(i % 40), headers={"content-type": "image/jpeg"}
            )
            build = r.json()["index"]["build_id"] if r.status_code == 200 else None
            out.append((r.status_code, build))

    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    if published is not None:
        await published
    return out


def test_publish_under_load_swaps_without_a_failed_request_and_refuses_a_corrupt_index(
    served: tuple[str, str, np.ndarray],
) -> None:
    workdir, catalog, emb = served
    before = pointers.read_pointer(fx_current(workdir)).value
    assert before
    settings = ServeSettings(workdir=workdir, catalog=catalog, poll_s=0.1, calibration_photos=20)
    with fx.LiveServer(create_app(settings)) as url:
        old = fx.wait_ready(url)["index"]["build_id"]
        new = "20260101T000002Z-cccccc"
        results = asyncio.run(
            load(
                url,
                requests=160,
                clients=4,
                publish_at=30,
                publish=lambda: fx.build_and_publish(workdir, catalog, new, emb),
            )
        )
        # Keep searching until the new index answers (the watcher polls every 0.1 s).
        fx.wait_ready(url, new)
        results += asyncio.run(load(url, 20, 2, -1, None))
        assert [s for s, _ in results if s != 200] == []
        builds = [b for _, b in results]
        assert set(builds) == {old, new} and builds[-1] == new

        # A corrupt build: publish refuses it, CURRENT stays on the build in service.
        serving = pointers.read_pointer(fx_current(workdir)).value
        with pytest.raises(PublishError, match="shard-00000.faiss is corrupted or truncated"):
            fx.build_and_publish(
                workdir, catalog, "20260101T000003Z-dddddd", emb, before_publish=corrupt
            )
        assert pointers.read_pointer(fx_current(workdir)).value == serving
        # CURRENT made to name it anyway (a hand edit, an older publisher): the service refuses
        # and logs it, the old one keeps serving, and /readyz says so.
        bad = storage.join(
            paths.index_build_dir(workdir, VERSION, "20260101T000003Z-dddddd"), "manifest.json"
        )
        storage.write_text(fx_current(workdir), bad + "\n")
        refused = wait_refused(url)
        assert (
            "corrupted or truncated" in refused["last_error"]
            and "shard-00000" in refused["last_error"]
        )
        assert refused["index"]["build_id"] == new
        assert (
            refused["fallback"]
            == f"CURRENT names {bad}, which was refused; still serving {serving}"
        )
        r = httpx.post(f"{url}/search?k=1", content=jpeg(5), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["index"]["build_id"] == new
        metrics = httpx.get(f"{url}/metrics").text
        assert "vsearch_serve_index_refused_total 1.0" in metrics
        assert "vsearch_serve_index_swaps_total 2.0" in metrics

        # The next good publish is taken again.
        fx.build_and_publish(workdir, catalog, "20260101T000004Z-eeeeee", emb)
        body = fx.wait_ready(url, "20260101T000004Z-eeeeee")
        assert body["last_error"] is None and body["fallback"] is None


def fx_current(workdir: str) -> str:
    return paths.current_index_pointer(workdir)


def wait_refused(url: str, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/readyz").json()
        if body.get("last_error"):
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("the corrupt index was not refused")


def test_a_restart_on_a_corrupt_current_serves_the_newest_build_that_verifies(
    tmp_path: Path,
) -> None:
    """Issue 30 point 1: CURRENT names a corrupt build (written around publish) and the
    service restarts: it serves the newest build publish verified that still loads, says so on
    /readyz and /health, and takes CURRENT again once it names a good build."""
    workdir, catalog, emb = fx.make_served_workdir(str(tmp_path))
    second = fx.build_and_publish(workdir, catalog, "20260102T000000Z-bbbbbb", emb, keep=30)
    # The newest verified build is damaged after its publish: the fallback skips it too.
    third = fx.build_and_publish(workdir, catalog, "20260103T000000Z-cccccc", emb)
    corrupt(third)
    bad = storage.join(
        paths.index_build_dir(workdir, VERSION, "20260104T000000Z-dddddd"), "manifest.json"
    )
    fx.build(emb, storage.parent(bad), VERSION, "20260104T000000Z-dddddd", 1, "Flat", 2)
    shard = storage.join(storage.parent(bad), "shard-00000.faiss")
    intact = storage.read_bytes(shard)
    corrupt(bad)
    storage.write_text(fx_current(workdir), bad + "\n")

    settings = ServeSettings(workdir=workdir, catalog=catalog, poll_s=0.1, calibration_photos=0)
    with fx.LiveServer(create_app(settings)) as url:
        ready = fx.wait_ready(url)
        assert ready["index"]["build_id"] == "20260102T000000Z-bbbbbb"
        assert ready["fallback"] == (
            f"CURRENT names {bad}, which was refused; serving {second} instead, the newest "
            "build that verifies"
        )
        assert "corrupted or truncated" in ready["last_error"] and bad in ready["last_error"]
        r = httpx.post(f"{url}/search?k=1", content=jpeg(5), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["index"]["build_id"] == "20260102T000000Z-bbbbbb"
        page = httpx.get(f"{url}/health").text
        assert f"serving {second} instead" in page and "20260102T000000Z-bbbbbb" in page
        # The build repaired and published: CURRENT's text is unchanged, but the service sees
        # the new publish and loads it; the fallback ends.
        storage.write_bytes(shard, intact)
        assert publish.publish(workdir, bad).previous == bad
        body = fx.wait_ready(url, "20260104T000000Z-dddddd")
        assert body["fallback"] is None and body["last_error"] is None
