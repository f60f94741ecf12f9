"""Large uploads on a real uvicorn server: photo decodes in flight stay within ``--max-decodes``
(a 7000x7000 PNG is ~160 KB on the wire and hundreds of MB while it decodes), and every request
gets an answer: a search, or a 503 ``busy`` naming the cause when no slot frees in time."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from core import images
from tests import serve_fixtures as fx
from vsearch.serve.app import create_app
from vsearch.serve.command import ServeSettings

BIG = 7000  # 49 MP: under the decoder's 50 MP limit, so it really decodes


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return fx.make_served_workdir(str(tmp_path_factory.mktemp("uploads")))[0]


@pytest.fixture(scope="module")
def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (BIG, BIG), (200, 40, 30)).save(buf, format="PNG")
    return buf.getvalue()


class DecodeMeter:
    """Wraps the safe decoder: counts decodes in flight (and the most seen); a decode can be
    held at its start until ``release`` is set."""

    def __init__(self, real: object) -> None:
        self.real, self.lock = real, threading.Lock()
        self.in_flight = self.peak = self.done = 0
        self.started, self.release = threading.Event(), threading.Event()
        self.release.set()

    def __call__(self, data: bytes, *args: object, **kwargs: object) -> object:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        self.started.set()
        try:
            self.release.wait(120)  # a guard against a stuck test, not a timing assert
            return self.real(data, *args, **kwargs)  # type: ignore[operator]
        finally:
            with self.lock:
                self.in_flight -= 1
                self.done += 1


@pytest.fixture()
def meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[DecodeMeter]:
    m = DecodeMeter(images.decode_frame)
    monkeypatch.setattr(images, "decode_frame", m)  # decode_image and the embedder call it
    yield m
    m.release.set()


async def post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        return await asyncio.gather(
            *(
                c.post("/search?k=3", content=b, headers={"content-type": "image/png"})
                for b in bodies
            )
        )


def serve(workdir: str, max_decodes: int, decode_wait_s: float) -> fx.LiveServer:
    settings = ServeSettings(
        workdir=workdir, poll_s=60, max_decodes=max_decodes, decode_wait_s=decode_wait_s
    )
    return fx.LiveServer(create_app(settings))


def test_concurrent_huge_pngs_decode_at_most_max_decodes_at_once(
    workdir: str, big_png: bytes, meter: DecodeMeter
) -> None:
    with serve(workdir, max_decodes=2, decode_wait_s=300) as url:
        fx.wait_ready(url)
        answers = asyncio.run(post_all(url, [big_png] * 6))
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert all(len(r.json()["results"]) == 3 for r in answers)
    # Every photo decoded, never more than 2 at once (the batcher decodes a batch's photos one
    # after another, so concurrent requests decode no more at once than one request does).
    assert meter.done == 6 and 1 <= meter.peak <= 2


def test_requests_that_wait_too_long_get_a_clear_503_and_the_rest_are_answered(
    workdir: str, big_png: bytes, meter: DecodeMeter
) -> None:
    small = _png(64)
    with serve(workdir, max_decodes=1, decode_wait_s=0.3) as url:
        fx.wait_ready(url)

        async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
            meter.release.clear()  # the first decode holds the only slot until released
            meter.started.clear()
            first = asyncio.create_task(post_all(url, [big_png]))
            while not meter.started.is_set():
                await asyncio.sleep(0.01)
            refused = await post_all(url, [big_png, small, big_png])
            meter.release.set()
            return (await first)[0], refused

        first, refused = asyncio.run(scenario())
        after = asyncio.run(post_all(url, [small]))[0]  # the slot is free again
    assert first.status_code == 200 and after.status_code == 200
    for r in refused:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["code"] == "busy" and "decoding slots stayed busy" in error["message"]
    assert meter.peak == 1


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
