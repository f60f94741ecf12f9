"""Request bodies: the photos of a search request, or a clear 4xx saying what is wrong.

Accepted: ``multipart/form-data`` (file parts are photos, text parts are parameters), or a raw
body with ``Content-Type: image/*`` or ``application/octet-stream``. The body is read in chunks
and refused with 413 as soon as it passes the configured limit (a declared Content-Length over
the limit is refused before reading anything), so an oversized upload never sits in memory.

What a photo costs is its decoded size, not its upload size: a 7000x7000 PNG of one colour is
160 KB on the wire and ~0.4-0.9 GB while it decodes (RGB to RGBA or 16-bit grey; the decoder
refuses more than 50 MP before decoding a pixel). ``DecodeSlots`` bounds how many requests
decode at once; a request decodes its photos one after another, so it holds one slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message


class ApiError(Exception):
    """An error the client caused: HTTP status, a stable code, and a message naming the cause."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Upload:
    photos: list[tuple[str, bytes]]  # (file name or "body", bytes)
    fields: list[tuple[str, str]]  # text form fields (multipart only)


RAW_TYPES = ("application/octet-stream",)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "too_large", f"upload of {declared} bytes is over the {limit}-byte limit"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"upload is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, limit: int, max_files: int) -> Upload:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype == "multipart/form-data" or ctype.startswith("image/") or ctype in RAW_TYPES):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {ctype or '(none)'!r} is not accepted: send multipart/form-data with "
            "an image file, or the image itself as image/* or application/octet-stream",
        )
    body = await read_body(request, limit)
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty: send an image")
    if ctype != "multipart/form-data":
        return Upload([("body", body)], [])
    return await _parse_multipart(request, body, max_files)


async def _parse_multipart(request: Request, body: bytes, max_files: int) -> Upload:
    sent = False

    async def replay() -> Message:  # the body already read (and size-checked), once
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=64)
    except Exception as e:  # starlette raises HTTPException/MultiPartException for bad parts
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {detail}") from e
    photos: list[tuple[str, bytes]] = []
    fields: list[tuple[str, str]] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            photos.append((value.filename or name, await value.read()))
        else:
            fields.append((name, value))
    await form.close()
    if not photos:
        raise ApiError(400, "no_image", "the multipart body has no file part: attach an image")
    for fname, data in photos:
        if not data:
            raise ApiError(400, "empty_body", f"file part {fname!r} is empty: send an image")
    return Upload(photos, fields)


class DecodeSlots:
    """At most ``slots`` requests decode and embed photos at once; a request waits up to
    ``wait_s`` for a slot (FIFO), then gets 503 ``busy``. Used from the event loop only."""

    def __init__(self, slots: int, wait_s: float) -> None:
        if slots < 1 or wait_s <= 0:
            raise ValueError(f"need slots >= 1 and wait_s > 0, got {slots} and {wait_s}")
        self.slots, self.wait_s = slots, wait_s
        self._free = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait_s)
        except TimeoutError:
            raise ApiError(
                503,
                "busy",
                f"all {self.slots} photo decoding slots stayed busy for {self.wait_s:g} s "
                "(large photos in flight): retry shortly",
            ) from None
        try:
            yield
        finally:
            self._free.release()
