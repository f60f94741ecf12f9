"""The HTTP routes of ``vsearch serve`` (FastAPI on uvicorn).

``POST /search``         one photo (multipart file or raw image body) -> top-k listings
``POST /search/batch``   several photos (multipart files) -> top-k listings each, errors per photo
``GET /healthz``         the process is up
``GET /readyz``          an index is loaded, its checksums verified (503 until then); ``fallback``
                         says when it is not the one CURRENT names (that one failed to load)
``GET /metrics``         Prometheus text format
``GET /health``          the operators' HTML page (stage runs per day, index in service)

Parameters (query string, or text parts of a multipart body): ``k`` and the filters of
``filters.py``. Every client error is a 4xx with ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vsearch.serve import filters, health
from vsearch.serve.answers import Answered, Query, answer_batch
from vsearch.serve.batcher import Batcher, BatchSettings
from vsearch.serve.command import ServeSettings
from vsearch.serve.filters import Filter, FilterError
from vsearch.serve.holder import (
    IndexHolder,
    Loader,
    LoadOptions,
    NotReady,
    ServedIndex,
    load_index,
)
from vsearch.serve.metrics import ServeMetrics
from vsearch.serve.uploads import ApiError, DecodeSlots, read_upload

log = logging.getLogger(__name__)

ENDPOINTS = ("/search", "/search/batch", "/healthz", "/readyz", "/metrics", "/health")


def _error(status: int, code: str, message: str) -> JSONResponse:
    # A 503 is a busy or not-ready service: a client should come back, soon.
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _params(
    request: Request, fields: list[tuple[str, str]], max_k: int, default_k: int
) -> tuple[int, Filter]:
    params = list(request.query_params.multi_items()) + fields
    ks = [v for name, v in params if name == "k"]
    k = default_k
    if ks:
        try:
            k = int(ks[-1])
        except ValueError:
            raise ApiError(400, "bad_k", f"k must be an integer, got {ks[-1]!r}") from None
    if not 1 <= k <= max_k:
        raise ApiError(400, "bad_k", f"k must be between 1 and {max_k}, got {k}")
    try:
        f = filters.parse((name, v) for name, v in params if name != "k")
    except FilterError as e:
        raise ApiError(400, "bad_filter", str(e)) from e
    return k, f


def _index_info(served: ServedIndex) -> dict[str, Any]:
    return {
        "build_id": served.build_id,
        "model_version": served.model_version,
        "manifest": served.manifest_uri,
    }


def create_app(settings: ServeSettings, loader: Loader | None = None) -> FastAPI:
    metrics = ServeMetrics()
    decodes = DecodeSlots(settings.max_decodes, settings.decode_wait_s)
    opts = LoadOptions(
        workdir=settings.workdir,
        catalog=settings.catalog,
        cache_dir=settings.cache_dir,
        calibration_photos=settings.calibration_photos,
        no_match_threshold=settings.no_match_threshold,
        overfetch=settings.overfetch,
        max_fetch=settings.max_fetch,
    )

    def on_event(event: str, served: ServedIndex | None, detail: str) -> None:
        if event == "swapped" and served is not None:
            metrics.swaps.inc()
            metrics.serving(served.build_id, served.model_version)
        elif event == "refused":
            metrics.refused.inc()

    holder = IndexHolder(
        settings.workdir,
        loader or (lambda uri, previous: load_index(uri, opts, previous)),
        settings.poll_s,
        on_event,
    )

    def on_batch(photos: int, requests: int) -> None:
        metrics.batch_photos.observe(photos)
        metrics.batch_requests.observe(requests)

    batcher = Batcher(
        lambda jobs: answer_batch(holder, jobs),
        BatchSettings(settings.batch_window_ms / 1000, settings.batch_photos, settings.batch_queue),
        on_batch,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        holder.start()
        try:
            yield
        finally:
            await batcher.stop()
            await run_in_threadpool(holder.stop)

    app = FastAPI(title="vsearch serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.batcher = batcher

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            metrics.requests.labels(endpoint, str(status)).inc()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        metrics.errors.labels(_endpoint(request), e.code).inc()
        return _error(e.status, e.code, e.message)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, e: NotReady) -> JSONResponse:
        metrics.errors.labels(_endpoint(request), "not_ready").inc()
        return _error(503, "not_ready", f"no index in service: {e}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        metrics.errors.labels(_endpoint(request), code).inc()
        return _error(e.status_code, code, str(e.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        metrics.errors.labels(_endpoint(request), "internal").inc()
        return _error(500, "internal", f"internal error: {type(e).__name__}")

    async def search(
        request: Request, max_files: int
    ) -> tuple[ServedIndex, list[str], list[dict[str, Any]], int, Filter]:
        upload = await read_upload(request, settings.max_upload_bytes, max_files)
        if len(upload.photos) > max_files:
            raise ApiError(400, "too_many_images", f"at most {max_files} image(s) per request")
        k, f = _params(request, upload.fields, settings.max_k, settings.default_k)
        # The batch takes the index in service when it runs: a request waiting for a slot or
        # in the queue keeps no swapped-out index open, and a whole batch answers from one.
        async with decodes.hold():
            answer: Answered = await batcher.submit([p for _, p in upload.photos], Query(k, f))
        if answer.fallbacks:
            metrics.fallbacks.inc(answer.fallbacks)
        return answer.served, [name for name, _ in upload.photos], answer.results, k, f

    def envelope(served: ServedIndex, k: int, f: Filter, start: float) -> dict[str, Any]:
        return {
            "index": _index_info(served),
            "k": k,
            "filters": {name: list(v) for name, v in f.fields().items()},
            "no_match_threshold": served.calibration.threshold,
            "took_ms": round((time.perf_counter() - start) * 1000, 3),
        }

    @app.post("/search")
    async def search_one(request: Request) -> JSONResponse:
        start = time.perf_counter()
        served, _, results, k, f = await search(request, max_files=1)
        if "error" in results[0]:
            e = results[0]["error"]
            raise ApiError(422, e["code"], e["message"])
        return JSONResponse({**envelope(served, k, f, start), **results[0]})

    @app.post("/search/batch")
    async def search_batch(request: Request) -> JSONResponse:
        start = time.perf_counter()
        served, names, results, k, f = await search(request, max_files=settings.max_batch)
        named = [{"image": name, **r} for name, r in zip(names, results, strict=True)]
        return JSONResponse({**envelope(served, k, f, start), "photos": named})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        served = holder.current
        if served is None:
            return _error(503, "not_ready", holder.last_error or "loading the index")
        body = {
            "ready": True,
            "index": _index_info(served),
            "checksums_verified": True,  # a ServedIndex exists only after every sha256 matched
            "loaded_at": served.loaded_at,
            "attributes": served.attributes.source,
            "no_match": asdict(served.calibration),
            "last_error": holder.last_error,
            "fallback": holder.fallback,
        }
        return JSONResponse(body)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health")
    async def health_page() -> HTMLResponse:
        # A fallback is the first thing the index section says (beside CURRENT's refusal).
        problem = "; ".join(x for x in (holder.fallback, holder.last_error) if x) or None
        html = await run_in_threadpool(
            health.render, settings.workdir, holder.current, problem, settings.health_days
        )
        return HTMLResponse(html)

    return app


def _endpoint(request: Request) -> str:
    return request.url.path if request.url.path in ENDPOINTS else "other"
