"""``vsearch rate``: a local web app to rate a task's results (Starlette, server-rendered HTML).

Resuming: ``/`` sends a rater to the first query with a result they have not rated. Every rating
is stored before the browser is told it was saved (see ``ratings.py``), so a reload, a closed tab
or a killed server loses nothing. Raters are told apart by name (``?rater=NAME`` once, then a
cookie), so two raters can share one server, or each run their own on another port.

Safety: images are served by their position in the task's list (``/img/N``), never by a path from
the request, and are re-encoded through the safe decoder. A bad request (a position out of range,
a malformed name, a rating that is not a JSON object of four strings, a name reserved for the
simulated rater) is a 4xx with the reason; a bad task file or rating file is a 503 saying which
file (the request is fine, the server cannot serve it), a missing image a 404. Never a traceback.
Ratings must be posted as ``application/json``: a browser will not send that cross-site without
asking first, so another web page cannot post ratings to this local app behind a rater's back.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from core import images, storage
from core.settings import doc
from vsearch.evaluation import pages
from vsearch.evaluation.ratings import (
    RatingsError,
    RatingStore,
    ReservedRaterName,
    check_person,
    grade_of,
)
from vsearch.evaluation.task import TASK, RatingTask, TaskError, read_task

log = logging.getLogger("vsearch.rate")
PHOTO_SIZE = 320  # pixels on the longer side: enough to judge colour, shape and material
MAX_BODY = 16 * 1024  # bytes of a rating request; one rating is about 150
_POSITION = re.compile(r"[0-9]{1,9}")  # /q/N and /img/N: plain digits, no sign, no spaces
RATING_FIELDS = ("rater", "query_id", "listing_id", "label")


class BadRequest(ValueError):
    """A request the app refuses; ``status`` is its 4xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RateSettings:
    task: str = field(metadata=TASK)
    port: int = field(  # any free port; two raters may also run two servers
        default=8765, metadata=doc("port of the rating page")
    )
    host: str = field(  # local only: the app has no login
        default="127.0.0.1", metadata=doc("address to listen on")
    )
    rater: str | None = field(
        default=None, metadata=doc("your name (default: asked on the first page)")
    )
    simulate: bool = field(
        default=False,
        metadata=doc("rate from the generated catalog's ground truth (labelled simulated)"),
    )


class _State:
    """The task (or why it could not be read), loaded again when the file changes."""

    def __init__(self, task_uri: str) -> None:
        self.task_uri = task_uri
        self.store = RatingStore(task_uri)
        self._text: str | None = None
        self.task: RatingTask | None = None
        self.error: str | None = None
        self.image_ids: dict[str, int] = {}
        self.image_uris: list[str] = []

    def load(self) -> RatingTask | None:
        try:
            text = storage.read_text(self.task_uri) if storage.exists(self.task_uri) else None
        except (storage.StorageError, UnicodeDecodeError) as e:
            text, self.error = None, f"cannot read rating task {self.task_uri}: {e}"
        if text is not None and text == self._text:
            return self.task
        self._text = text
        try:
            self.task = read_task(self.task_uri)
            self.error = None
            self.image_uris = self.task.image_uris()
            self.image_ids = {u: i for i, u in enumerate(self.image_uris)}
        except TaskError as e:
            self.task, self.error = None, str(e)
            log.error("vsearch rate: %s", e)
        return self.task


def _person(name: str) -> str:
    """A rater name from a request: 400 when malformed, 403 when reserved for the simulated one."""
    try:
        return check_person(name)
    except ReservedRaterName as e:
        raise BadRequest(403, str(e)) from e
    except ValueError as e:
        raise BadRequest(400, str(e)) from e


def _rater(request: Request, default: str | None) -> str | None:
    """The rater of a page request: ``?rater=``, else the cookie, else ``--rater``.

    A name given in the URL is checked (400 malformed, 403 reserved); a cookie this app did not
    set is ignored, as if there were none.
    """
    given = request.query_params.get("rater")
    if given:
        return _person(given)
    cookie = request.cookies.get("rater")
    if cookie:
        try:
            return check_person(cookie)
        except ValueError:
            pass
    return default


def _position(text: str, count: int, what: str) -> int:
    """A 0-based position from a path (``/q/N``, ``/img/N``), or a 404 naming the range."""
    if not _POSITION.fullmatch(text) or int(text) >= count:
        raise BadRequest(404, f"no {what} {text!r} in this task (there are {count}: 0-{count - 1})")
    return int(text)


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object, read up to ``MAX_BODY`` bytes."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise BadRequest(415, f"send the rating as application/json, not {kind or 'no type'}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(413, f"a rating is at most {MAX_BODY} bytes, this one is {declared}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(413, f"a rating is at most {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested arrays
        raise BadRequest(400, f"the body is not JSON: {type(e).__name__}") from e
    if not isinstance(data, dict):
        raise BadRequest(400, f"the body must be a JSON object with {', '.join(RATING_FIELDS)}")
    return data


def _rating(task: RatingTask, body: dict[str, Any]) -> tuple[str, str, str, int]:
    """(rater, query id, listing id, grade) of a rating request, each checked against the task."""
    for name in RATING_FIELDS:
        if not isinstance(body.get(name), str):
            raise BadRequest(400, f"{name!r} must be a string (fields: {', '.join(RATING_FIELDS)})")
    rater = _person(body["rater"])
    try:
        q = task.query(body["query_id"])
    except KeyError:
        raise BadRequest(400, f"query {body['query_id']!r} is not in this task") from None
    listing = body["listing_id"]
    if listing not in {r.listing_id for r in task.results_of(q)}:
        raise BadRequest(400, f"listing {listing!r} is not a result of query {q.query_id}")
    try:
        grade = grade_of(body["label"])
    except ValueError as e:
        raise BadRequest(400, str(e)) from e
    return rater, q.query_id, listing, grade


def _error(state: _State) -> HTMLResponse:
    return HTMLResponse(pages.error_page(state.error or "no task"), status_code=503)


def create_app(settings: RateSettings) -> Starlette:
    if settings.rater is not None:
        check_person(settings.rater)  # a bad or reserved --rater stops here, before serving
    state = _State(settings.task)
    state.load()

    def _with_cookie(resp: Response, rater: str) -> Response:
        resp.set_cookie("rater", rater, samesite="strict", httponly=True)
        return resp

    async def home(request: Request) -> Response:
        task = state.load()
        if task is None:
            return _error(state)
        try:
            rater = _rater(request, settings.rater)
        except BadRequest as e:
            return HTMLResponse(pages.rater_form(task, str(e)), e.status)
        if rater is None:
            return HTMLResponse(pages.rater_form(task))
        mine = state.store.of_rater(rater)
        for i, q in enumerate(task.queries):
            if any((q.query_id, r.listing_id) not in mine for r in task.results_of(q)):
                return _with_cookie(RedirectResponse(f"/q/{i}", status_code=303), rater)
        return _with_cookie(HTMLResponse(pages.done_page(task, rater)), rater)

    async def query(request: Request) -> Response:
        task = state.load()
        if task is None:
            return _error(state)
        try:
            index = _position(request.path_params["index"], len(task.queries), "query")
            rater = _rater(request, settings.rater)
        except BadRequest as e:
            return HTMLResponse(pages.error_page(str(e)), e.status)
        if rater is None:
            return RedirectResponse("/", status_code=303)
        mine = state.store.of_rater(rater)
        q = task.queries[index]
        grades = {lid: r.grade for (qid, lid), r in mine.items() if qid == q.query_id}
        page = pages.query_page(task, index, rater, state.image_ids, grades, _rated(task, mine))
        return _with_cookie(HTMLResponse(page), rater)

    async def rate(request: Request) -> Response:
        task = state.load()
        if task is None:
            return JSONResponse({"error": state.error}, status_code=503)
        try:
            rater, query_id, listing, grade = _rating(task, await _json_object(request))
        except BadRequest as e:
            return JSONResponse({"error": f"bad rating: {e}"}, status_code=e.status)
        try:
            # Blocking I/O (fsync, or an upload on gs://) off the event loop: raters share it.
            await run_in_threadpool(state.store.put, rater, query_id, listing, grade)
        except (OSError, storage.StorageError) as e:
            log.error("vsearch rate: cannot save a rating of %s: %s", rater, e)
            return JSONResponse({"error": f"cannot save the rating: {e}"}, status_code=503)
        # Counted after the write: ratings sent in quick succession each see the ones before.
        rated = _rated(task, state.store.of_rater(rater))
        return JSONResponse({"grade": grade, "rated": rated, "total": task.total_results()})

    async def image(request: Request) -> Response:
        task = state.load()
        if task is None:
            return Response(state.error or "no task", 503, media_type="text/plain")
        try:
            n = _position(request.path_params["n"], len(state.image_uris), "image")
        except BadRequest as e:
            return Response(str(e), e.status, media_type="text/plain")
        uri = task.photo_uri(state.image_uris[n])
        try:
            pixels = await run_in_threadpool(
                lambda: images.decode_image(storage.read_bytes(uri), PHOTO_SIZE)
            )
        except (storage.StorageError, images.ImageError) as e:
            log.warning("vsearch rate: image missing or unreadable: %s (%s)", uri, e)
            return Response(f"image missing or unreadable: {uri}", 404, media_type="text/plain")
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=88)
        return Response(
            buf.getvalue(),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": state.load() is not None, "error": state.error})

    def _answer(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return HTMLResponse(pages.error_page(message), status)

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own refusals: an unknown path (404), a wrong method (405).
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return _answer(request, status, f"{detail}: {request.method} {request.url.path}")

    async def ratings_error(request: Request, exc: Exception) -> Response:
        log.error("vsearch rate: %s", exc)
        return _answer(request, 503, str(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("vsearch rate: unexpected error on %s", request.url.path)
        return _answer(request, 500, f"unexpected error: {type(exc).__name__}: {exc}")

    return Starlette(
        routes=[
            Route("/", home),
            Route("/q/{index}", query),
            Route("/api/rate", rate, methods=["POST"]),
            Route("/img/{n}", image),
            Route("/healthz", healthz),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
        ],
        exception_handlers={
            HTTPException: http_error,
            RatingsError: ratings_error,
            Exception: server_error,
        },
    )


def _rated(task: RatingTask, mine: Mapping[tuple[str, str], object]) -> int:
    return sum((q.query_id, r.listing_id) in mine for q in task.queries for r in task.results_of(q))


def run(settings: RateSettings) -> int:
    """Serve until interrupted (or, with ``simulate``, rate everything with the simulated rater)."""
    if settings.simulate:
        from vsearch.evaluation import simulate

        n = simulate.rate_all(settings.task)
        print(f"[rate] simulated rater gave {n} ratings to {settings.task}")
        return 0
    import uvicorn

    try:
        read_task(settings.task)
    except TaskError as e:
        # Still serve: the page explains the problem and picks up a fixed file on reload.
        log.error("vsearch rate: %s", e)
    print(
        f"[rate] open http://{settings.host}:{settings.port}/  (Ctrl-C to stop; ratings are saved as given)"
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
    return 0
