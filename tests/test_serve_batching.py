"""Batched serving on a real uvicorn server: concurrent requests share model calls and get
exactly the answers they get alone; a bad photo in one request costs the others nothing; a full
queue answers 503 ``busy``; a cancelled request frees its room in the queue; a batch answers
from one index even when a swap happens while it waits (batcher.py, answers.py)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from core import images
from tests import serve_fixtures as fx
from tests.test_index_query import photo
from vsearch.serve.app import create_app
from vsearch.serve.batcher import Batcher, BatchSettings, Job
from vsearch.serve.command import ServeSettings
from vsearch.serve.uploads import ApiError

# (path and query, photos): plain, filtered, another k, several photos in one request.
REQUESTS: list[tuple[str, list[bytes]]] = [
    ("/search?k=5", [photo(fx.listing_rgb(i), "JPEG", size=80)]) for i in range(6)
] + [
    ("/search?k=3&color=red", [photo(fx.listing_rgb(9), "JPEG", size=80)]),
    ("/search?k=4&category=jewelry/rings", [photo(fx.listing_rgb(2), "JPEG", size=80)]),
    ("/search?k=2", [photo(fx.listing_rgb(11), "PNG")]),
    ("/search/batch?k=3", [photo(fx.listing_rgb(i), "JPEG", size=64) for i in (4, 17, 30)]),
]
NOT_AN_IMAGE = b"this is not an image"
FIRST_BUILD, SECOND_BUILD = "20260101T000000Z-aaaaaa", "20260101T000001Z-bbbbbb"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    workdir, catalog, _ = fx.make_served_workdir(str(tmp_path_factory.mktemp("batching")))
    return workdir, catalog


class Gate:
    """Holds every photo decode until opened (so requests pile up behind a running batch)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real, self.open, self.started = real, threading.Event(), threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started.set()
        self.open.wait(120)  # a guard against a stuck test, not a timing assert
        return self.real(*args, **kwargs)


@pytest.fixture()
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate(images.decode_frame)
    g.open.set()
    monkeypatch.setattr(images, "decode_frame", g)  # the embedder's decoder
    yield g
    g.open.set()


def post(url: str, path: str, shots: list[bytes]) -> httpx.Response:
    if path.startswith("/search/batch"):
        files = [("images", (f"p{i}.jpg", p, "image/jpeg")) for i, p in enumerate(shots)]
        return httpx.post(url + path, files=files, timeout=120)
    return httpx.post(url + path, content=shots[0], headers={"content-type": "image/jpeg"})


def answer(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return {k: v for k, v in r.json().items() if k != "took_ms"}


def model_calls(url: str) -> int:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(r"^vsearch_serve_batch_size_count (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


def batcher_of(app: Any) -> Batcher:
    b: Batcher = app.state.batcher
    return b


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def concurrently(
    url: str, app: Any, gate: Gate, requests: list[tuple[str, list[bytes]]]
) -> list[httpx.Response]:
    """The first request's batch is held at its first decode until every other request is
    queued behind it; then all run. Returns the responses in request order."""
    batcher = batcher_of(app)
    gate.open.clear()
    gate.started.clear()
    with ThreadPoolExecutor(len(requests)) as pool:
        first = pool.submit(post, url, *requests[0])
        assert gate.started.wait(60)
        rest = [pool.submit(post, url, path, shots) for path, shots in requests[1:]]
        queued = sum(len(shots) for _, shots in requests[1:])
        wait_until(lambda: batcher.queued_photos == queued, "the others never queued")
        gate.open.set()
        return [first.result()] + [f.result() for f in rest]


def test_concurrent_requests_get_their_lone_answers_in_fewer_model_calls(
    served: tuple[str, str], gate: Gate
) -> None:
    workdir, catalog = served
    app = create_app(ServeSettings(workdir=workdir, catalog=catalog, poll_s=60, max_decodes=32))
    with fx.LiveServer(app) as url:
        fx.wait_ready(url)
        alone = [answer(post(url, path, shots)) for path, shots in REQUESTS]
        before = model_calls(url)
        assert before == len(REQUESTS)  # one at a time: one model call each
        together = [answer(r) for r in concurrently(url, app, gate, REQUESTS)]
        calls = model_calls(url) - before
    assert together == alone  # listing ids, scores, boxes, attributes, no_match: all the same
    assert alone[6]["filters"] == {"color": ["red"]} and alone[9]["k"] == 3
    assert all(r["attributes"]["color"] == "red" for r in alone[6]["results"])
    assert calls < len(REQUESTS), calls  # held first batch + the rest in one: 2 calls


def test_a_bad_photo_in_one_concurrent_request_leaves_the_others_intact(
    served: tuple[str, str], gate: Gate
) -> None:
    workdir, catalog = served
    app = create_app(ServeSettings(workdir=workdir, catalog=catalog, poll_s=60, max_decodes=32))
    mixed = [
        REQUESTS[0],
        ("/search?k=5", [NOT_AN_IMAGE]),
        REQUESTS[6],
        ("/search/batch?k=3", [REQUESTS[9][1][0], NOT_AN_IMAGE, REQUESTS[9][1][2]]),
        REQUESTS[3],
    ]
    with fx.LiveServer(app) as url:
        fx.wait_ready(url)
        alone = [answer(post(url, path, shots)) for path, shots in (mixed[0], mixed[2], mixed[4])]
        batch_alone = answer(post(url, *REQUESTS[9]))
        got = concurrently(url, app, gate, mixed)
    assert [answer(got[i]) for i in (0, 2, 4)] == alone
    bad = got[1].json()
    assert got[1].status_code == 422 and bad["error"]["code"] == "not_an_image"
    photos = answer(got[3])["photos"]
    assert photos[1]["error"]["code"] == "not_an_image"
    assert [photos[0], photos[2]] == [batch_alone["photos"][0], batch_alone["photos"][2]]


def test_a_full_queue_answers_503_busy_and_the_queued_requests_are_answered(
    served: tuple[str, str], gate: Gate
) -> None:
    workdir, _ = served
    settings = ServeSettings(workdir=workdir, poll_s=60, max_decodes=32, batch_queue=2)
    app = create_app(settings)
    shot = REQUESTS[0][1]
    with fx.LiveServer(app) as url:
        fx.wait_ready(url)
        gate.open.clear()
        gate.started.clear()
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(post, url, "/search?k=2", shot)
            assert gate.started.wait(60)  # its batch holds the model
            queued = [pool.submit(post, url, "/search?k=2", shot) for _ in range(2)]
            wait_until(lambda: batcher_of(app).queued_photos == 2, "never queued")
            refused = post(url, "/search?k=2", shot)
            gate.open.set()
            answers = [running.result()] + [q.result() for q in queued]
        after = post(url, "/search?k=2", shot)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "busy" and "queue is full" in error["message"]
    assert [r.status_code for r in answers + [after]] == [200] * 4


def test_a_cancelled_request_frees_its_room_and_is_never_run() -> None:
    release = threading.Event()
    ran: list[list[str]] = []

    def run(jobs: list[Job]) -> list[Any]:
        ran.append([j.params for j in jobs])
        release.wait(60)
        return [f"answer {j.params}" for j in jobs]

    async def scenario() -> tuple[list[Any], BaseException | None, int]:
        batcher = Batcher(run, BatchSettings(window_s=0, max_photos=4, queue_photos=1))
        first = asyncio.create_task(batcher.submit([b"a"], "a"))
        while not ran:  # "a" is running
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):  # "b" waits in the queue until its client gives up
            await asyncio.wait_for(batcher.submit([b"b"], "b"), 0.1)
        room = batcher.queued_photos
        third = asyncio.create_task(batcher.submit([b"c"], "c"))  # fits: b's room is free
        await asyncio.sleep(0.05)
        refused: BaseException | None = None
        try:
            await batcher.submit([b"d"], "d")  # the queue holds c: no room
        except ApiError as e:
            refused = e
        release.set()
        answers = [await first, await third]
        await batcher.stop()
        return answers, refused, room

    answers, refused, room = asyncio.run(scenario())
    assert room == 0 and answers == ["answer a", "answer c"]
    assert isinstance(refused, ApiError) and refused.status == 503 and refused.code == "busy"
    assert ran == [["a"], ["c"]]  # the cancelled b never reached the model


def test_an_error_of_one_batch_fails_only_its_requests() -> None:
    def run(jobs: list[Job]) -> list[Any]:
        if any(j.params == "boom" for j in jobs):
            raise RuntimeError("model crashed")
        return [ValueError(j.params) if j.params == "bad" else j.params for j in jobs]

    async def scenario() -> list[Any]:
        batcher = Batcher(run, BatchSettings(window_s=0.05))
        out = await asyncio.gather(
            batcher.submit([b"x"], "ok"), batcher.submit([b"y"], "bad"), return_exceptions=True
        )
        out += await asyncio.gather(batcher.submit([b"z"], "boom"), return_exceptions=True)
        out.append(await batcher.submit([b"w"], "after"))
        await batcher.stop()
        return out

    ok, bad, boom, after = asyncio.run(scenario())
    assert ok == "ok" and isinstance(bad, ValueError) and after == "after"
    assert isinstance(boom, RuntimeError) and str(boom) == "model crashed"


def test_a_batch_answers_from_one_index_across_a_swap(
    tmp_path_factory: pytest.TempPathFactory, gate: Gate
) -> None:
    workdir, catalog, emb = fx.make_served_workdir(str(tmp_path_factory.mktemp("batch-swap")))
    app = create_app(ServeSettings(workdir=workdir, catalog=catalog, poll_s=60, max_decodes=32))
    only_old = [photo(fx.listing_rgb(35), "JPEG", size=80)]  # build B leaves listing 35 out
    with fx.LiveServer(app) as url:
        fx.wait_ready(url, FIRST_BUILD)
        gate.open.clear()
        gate.started.clear()
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(post, url, "/search?k=1", only_old)
            assert gate.started.wait(60)  # its batch holds build A
            queued = [pool.submit(post, url, "/search?k=1", only_old) for _ in range(2)]
            wait_until(lambda: batcher_of(app).queued_photos == 2, "never queued")
            fx.build_and_publish(workdir, catalog, SECOND_BUILD, emb, keep=30)
            assert app.state.holder.check_once() == "swapped"
            gate.open.set()
            old, *new = [answer(f.result()) for f in [running, *queued]]
    assert old["index"]["build_id"] == FIRST_BUILD
    assert old["results"][0]["listing_id"] == fx.embedding_tables.listing_id(35)
    for a in new:  # the next batch: wholly on build B
        assert a["index"]["build_id"] == SECOND_BUILD
        assert a["results"][0]["listing_id"] != fx.embedding_tables.listing_id(35)
