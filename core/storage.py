"""One storage layer for every URI: a local path, ``file://...`` or ``gs://bucket/prefix``.

Local paths use plain file I/O and gs:// uses google-cloud-storage, so the same call works on a
laptop and on Dataflow workers. It does not import Beam: a light command (``vsearch --help``,
``publish``, ``serve``) must not pay Beam's seconds of import time for a file read. What it
guarantees:

* atomic writes: a local file is written to ``NAME.tmp-XXXX`` then ``os.replace``d; a GCS object
  is only visible once its upload completes, so readers never see a partial file either way;
* globs with Beam's ``FileSystems.match`` syntax (``*`` within one path segment, ``**`` across
  segments), files only, so a pattern means the same here and in a Beam read;
* single-object rename/delete on gs:// (no GCS batch API, which the loopback test server and
  some proxies do not implement);

Pointer files and their compare-and-swap are ``core.pointers``; the google-cloud-storage
client (and what it does against an emulator) is ``core.gcs``.
"""

from __future__ import annotations

import contextlib
import functools
import glob as pyglob
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TypeVar, cast

from core import gcs

GCS_PREFIX = gcs.PREFIX
FILE_PREFIX = "file://"
IO_THREADS = 16  # gs:// requests in flight at once: each one mostly waits on the network
READ_CHUNK = 16 << 20  # bytes per ranged GET of a gs:// reader (Beam's default read buffer)
# What one local read asks for. CPython's file reader allocates a whole request before it reads:
# read_head(photo, 64 MiB + 1) in one go mapped and unmapped 64 MiB per 8-KB photo (BENCHMARKS.md
# "Embed job, 2026-12-06").
READ_PIECE = 1 << 20

_T = TypeVar("_T")
_R = TypeVar("_R")


class StorageError(RuntimeError):
    """A URI could not be read or written; the message names the URI."""


def normalize(uri: str) -> str:
    """``file:///x`` -> ``/x``; relative local paths become absolute; gs:// stays as is."""
    if uri.startswith(FILE_PREFIX):
        uri = uri[len(FILE_PREFIX) :]
    if is_gcs(uri):
        return uri.rstrip("/") if uri.count("/") > 3 else uri
    return os.path.abspath(uri)


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_PREFIX)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/' for gs:// and os.path.join locally."""
    base = normalize(base)
    if is_gcs(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def parent(uri: str) -> str:
    uri = normalize(uri)
    return posixpath.dirname(uri) if is_gcs(uri) else os.path.dirname(uri)


def basename(uri: str) -> str:
    return posixpath.basename(normalize(uri))


def exists(uri: str) -> bool:
    """Whether a file (locally also a directory) exists; on gs:// an object, not a prefix."""
    uri = normalize(uri)
    if is_gcs(uri):
        bucket, name = gcs.split(uri)
        return bool(gcs.client().bucket(bucket).blob(name).exists(retry=gcs.retry()))
    return os.path.exists(uri)


def read_bytes(uri: str) -> bytes:
    uri = normalize(uri)
    try:
        if is_gcs(uri):  # one media GET, no metadata request first
            bucket, name = gcs.split(uri)
            data: bytes = gcs.client().bucket(bucket).blob(name).download_as_bytes()
        else:
            with open(uri, "rb") as f:
                data = f.read()
    except Exception as e:  # local and GCS errors differ in type; the message names the URI
        raise StorageError(f"cannot read {uri}: {type(e).__name__}: {e}") from e
    return data


def read_head(uri: str, n: int) -> bytes:
    """The first ``n`` bytes of a file (fewer if it is shorter): one ranged GET on GCS, no
    metadata request first; locally ``READ_PIECE`` at a time, so that ``n`` may be a size cap."""
    uri = normalize(uri)
    try:
        if is_gcs(uri):
            bucket, name = gcs.split(uri)
            blob = gcs.client().bucket(bucket).blob(name)
            data: bytes = blob.download_as_bytes(start=0, end=n - 1, raw_download=True)
        else:
            with open(uri, "rb") as f:
                data = _read_at_most(f, n)
    except Exception as e:  # local and GCS errors differ in type; the message names the URI
        raise StorageError(f"cannot read {uri}: {type(e).__name__}: {e}") from e
    return data


def _read_at_most(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes of ``f``, read ``READ_PIECE`` at a time."""
    parts: list[bytes] = []
    while n > 0:
        part = f.read(min(n, READ_PIECE))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def open_read(uri: str) -> IO[bytes]:
    """A seekable binary reader (pyarrow and faiss readers take this); FileNotFoundError naming
    the URI when there is no such file."""
    uri = normalize(uri)
    if not is_gcs(uri):
        return open(uri, "rb")
    from google.cloud.storage.fileio import BlobReader

    bucket, name = gcs.split(uri)
    blob = gcs.client().bucket(bucket).get_blob(name, retry=gcs.retry())  # its size, for seeks
    if blob is None:
        raise FileNotFoundError(f"no object at {uri}")
    # raw_download: the stored bytes, as Beam reads them (no decompressive transcoding).
    reader = BlobReader(blob, chunk_size=READ_CHUNK, retry=gcs.retry(), raw_download=True)
    return cast(IO[bytes], reader)


@contextlib.contextmanager
def atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """Write a file that appears under its final name only when complete.

    On error nothing appears (and the local temp file is removed).
    """
    uri = normalize(uri)
    if is_gcs(uri):
        # Stage locally, then upload in one go: a GCS object becomes visible only when its upload
        # is finalised, and an error before that leaves nothing behind.
        bucket, name = gcs.split(uri)
        with tempfile.TemporaryFile() as staged:
            yield staged  # type: ignore[misc]
            size = staged.tell()
            staged.seek(0)
            # A whole-object overwrite is idempotent, so retrying it is safe (the library only
            # retries uploads with a precondition unless told).
            gcs.client().bucket(bucket).blob(name).upload_from_file(
                staged, size=size, content_type="application/octet-stream", retry=gcs.retry()
            )
        return
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, uri)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_writer(uri) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def glob(pattern: str) -> list[str]:
    """Sorted files matching a pattern, as Beam's ``FileSystems.match`` reads it: ``*`` stays
    within one path segment, ``**`` crosses '/', ``[...]`` is a class, and names starting with a
    dot match too (``?`` is one character of a segment). A pattern without wildcards matches
    itself if it exists."""
    pattern = normalize(pattern)
    literal = re.split(r"[\[*?]", pattern, maxsplit=1)[0]
    if literal == pattern:
        return [pattern] if exists(pattern) else []
    if is_gcs(pattern):  # list the names after the literal part once, then match
        bucket, name = gcs.split(literal)
        try:
            found = [uri for uri, _ in _gcs_listing(bucket, name)]
        except gcs.not_found():  # no such bucket: nothing matches
            return []
    elif "**" in pattern:
        found = list_prefix(os.path.dirname(literal))
    else:  # the standard glob visits only the directories the pattern can reach
        found = [p for p in pyglob.glob(pattern, include_hidden=True) if os.path.isfile(p)]
    wanted = re.compile(_glob_regex(pattern))
    return sorted(uri for uri in found if wanted.fullmatch(uri))


def _glob_regex(pattern: str) -> str:
    """``glob``'s pattern as a regular expression over whole paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", i + 1)) != -1:
            members = pattern[i:end].replace("\\", "\\\\")
            out.append("[^" + members[1:] + "]" if members.startswith("!") else f"[{members}]")
            i = end + 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def list_prefix(prefix: str) -> list[str]:
    """Every file under a directory-like prefix, recursively, sorted."""
    prefix = normalize(prefix)
    if is_gcs(prefix):
        return sorted(uri for uri, _ in _gcs_folder(prefix))
    out: list[str] = []
    for root, _, files in os.walk(prefix):
        out.extend(os.path.join(root, f) for f in files)
    return sorted(out)


def list_sizes(prefix: str) -> dict[str, int]:
    """Every file under a directory-like prefix, recursively, with its size in bytes (on gs://
    from the listing itself: no request per object)."""
    prefix = normalize(prefix)
    if is_gcs(prefix):
        return dict(_gcs_folder(prefix))
    return {path: os.path.getsize(path) for path in list_prefix(prefix)}


def _gcs_folder(prefix: str) -> Iterator[tuple[str, int]]:
    """(URI, size) of every object under a gs:// folder-like prefix, from its listing pages."""
    bucket, name = gcs.split(prefix)
    return _gcs_listing(bucket, name.rstrip("/") + "/")


def _gcs_listing(bucket: str, name_prefix: str) -> Iterator[tuple[str, int]]:
    """(URI, size) of every object whose name starts with ``name_prefix``."""
    for b in gcs.client().list_blobs(bucket, prefix=name_prefix, retry=gcs.retry()):
        yield f"gs://{bucket}/{b.name}", int(b.size or 0)


def map_io(fn: Callable[[_T], _R], items: Sequence[_T], *, remote: bool) -> list[_R]:
    """``[fn(x) for x in items]``, in order: ``IO_THREADS`` calls at a time when each waits on a
    network round trip (``remote``), else one after another (a local read or stat is a fast
    system call, and a thread pool costs more than it overlaps)."""
    if not remote or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def delete(uris: list[str]) -> None:
    """Delete files; missing ones are ignored (deletes are idempotent). gs:// objects are deleted
    ``IO_THREADS`` at a time: a re-run of a full day replaces thousands of files."""
    normalized = [normalize(u) for u in uris]
    map_io(_delete_one, normalized, remote=any(is_gcs(u) for u in normalized))


def _delete_one(uri: str) -> None:
    if is_gcs(uri):
        bucket, name = gcs.split(uri)
        with contextlib.suppress(gcs.not_found()):
            gcs.client().bucket(bucket).blob(name).delete()
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(uri)


def delete_prefix(prefix: str) -> None:
    delete(list_prefix(prefix))


def rename(src: str, dst: str) -> None:
    src, dst = normalize(src), normalize(dst)
    if is_gcs(src) != is_gcs(dst):
        raise StorageError(f"cannot rename across filesystems: {src} -> {dst}")
    if is_gcs(src):
        sb, sn = gcs.split(src)
        db, dn = gcs.split(dst)
        client = gcs.client()
        client.bucket(sb).copy_blob(client.bucket(sb).blob(sn), client.bucket(db), dn)
        client.bucket(sb).blob(sn).delete()
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)


def local_dir(uri: str) -> str:
    """A local directory with the content of ``uri``: the path itself when local, else a copy.

    For readers that only take local paths, or whose own GCS client cannot be pointed at an
    emulator (TensorFlow's SavedModel loader). A remote directory is copied once per process.
    """
    uri = normalize(uri)
    if not is_gcs(uri):
        if not os.path.isdir(uri):
            raise FileNotFoundError(f"no directory at {uri}")
        return uri
    return _downloaded_dir(uri)


@functools.cache
def _downloaded_dir(uri: str) -> str:
    files = list_prefix(uri)
    if not files:
        raise FileNotFoundError(f"no files under {uri}")
    local = tempfile.mkdtemp(prefix="vsearch-")
    for f in files:
        dest = os.path.join(local, *f[len(uri) :].lstrip("/").split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as out:
            out.write(read_bytes(f))
    return local
