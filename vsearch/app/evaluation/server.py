"""``vsearch rate``: a local web app to rate a task's results (Starlette, server-rendered HTML).

Resuming: ``/`` sends a rater to the first query with a result they have not rated. Every rating
is stored before the browser is told it was saved (see ``ratings.py``), so a reload, a closed tab
or a killed server loses nothing. Raters are told apart by name (``?rater=NAME`` once, then a
cookie), so two raters can share one server, or each run their own on another port.

Safety: images are served by their position in the task's list (``/img/N``), never by a path from
the request, and are re-encoded through the safe decoder. A bad task file or a missing image is a
clear message on the page and one line in the log, never a traceback.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from vsearch.app.evaluation import pages
from vsearch.app.evaluation.ratings import SIMULATED_PREFIX, RatingStore, check_rater, grade_of
from vsearch.app.evaluation.task import TASK, RatingTask, TaskError, read_task
from vsearch.core import images, storage
from vsearch.core.settings import doc

log = logging.getLogger("vsearch.rate")
PHOTO_SIZE = 320  # pixels on the longer side: enough to judge colour, shape and material


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


def _rater(request: Request, default: str | None) -> str | None:
    name = request.query_params.get("rater") or request.cookies.get("rater") or default
    if not name:
        return None
    try:
        return check_rater(name)
    except ValueError:
        return None


def _error(state: _State) -> HTMLResponse:
    return HTMLResponse(pages.error_page(state.error or "no task"), status_code=503)


def create_app(settings: RateSettings) -> Starlette:
    state = _State(settings.task)
    state.load()

    def _with_cookie(resp: Response, rater: str) -> Response:
        resp.set_cookie("rater", rater, samesite="strict", httponly=True)
        return resp

    async def home(request: Request) -> Response:
        task = state.load()
        if task is None:
            return _error(state)
        rater = _rater(request, settings.rater)
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
        rater = _rater(request, settings.rater)
        if rater is None:
            return RedirectResponse("/", status_code=303)
        try:
            index = int(request.path_params["index"])
            task.queries[index]
        except (ValueError, IndexError):
            return HTMLResponse(pages.error_page(f"no query {request.path_params['index']}"), 404)
        mine = state.store.of_rater(rater)
        q = task.queries[index]
        grades = {lid: r.grade for (qid, lid), r in mine.items() if qid == q.query_id}
        page = pages.query_page(
            task,
            index,
            rater,
            state.image_ids,
            grades,
            _rated(task, mine),
            rater.startswith(SIMULATED_PREFIX),
        )
        return _with_cookie(HTMLResponse(page), rater)

    async def rate(request: Request) -> Response:
        task = state.load()
        if task is None:
            return JSONResponse({"error": state.error}, status_code=503)
        try:
            body = await request.json()
            rater = check_rater(str(body["rater"]))
            q = task.query(str(body["query_id"]))
            listing = str(body["listing_id"])
            if listing not in {r.listing_id for r in task.results_of(q)}:
                raise ValueError(f"listing {listing!r} is not a result of query {q.query_id}")
            grade = grade_of(str(body["label"]))
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"error": f"bad rating: {e}"}, status_code=400)
        try:
            # Blocking I/O (fsync, or an upload on gs://) off the event loop: raters share it.
            await run_in_threadpool(state.store.put, rater, q.query_id, listing, grade)
        except (OSError, storage.StorageError) as e:
            log.error("vsearch rate: cannot save a rating of %s: %s", rater, e)
            return JSONResponse({"error": f"cannot save the rating: {e}"}, status_code=503)
        rated = _rated(task, state.store.of_rater(rater))
        return JSONResponse({"grade": grade, "rated": rated, "total": task.total_results()})

    async def image(request: Request) -> Response:
        task = state.load()
        if task is None:
            return Response(state.error or "no task", 503, media_type="text/plain")
        try:
            uri = state.image_uris[int(request.path_params["n"])]
        except (ValueError, IndexError):
            return Response("no such image in this task", 404, media_type="text/plain")
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

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("vsearch rate: unexpected error on %s", request.url.path)
        return HTMLResponse(pages.error_page(f"unexpected error: {type(exc).__name__}: {exc}"), 500)

    return Starlette(
        routes=[
            Route("/", home),
            Route("/q/{index}", query),
            Route("/api/rate", rate, methods=["POST"]),
            Route("/img/{n}", image),
            Route("/healthz", healthz),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
        ],
        exception_handlers={Exception: server_error},
    )


def _rated(task: RatingTask, mine: Mapping[tuple[str, str], object]) -> int:
    return sum((q.query_id, r.listing_id) in mine for q in task.queries for r in task.results_of(q))


def run(settings: RateSettings) -> int:
    """Serve until interrupted (or, with ``simulate``, rate everything with the simulated rater)."""
    if settings.simulate:
        from vsearch.app.evaluation import simulate

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
