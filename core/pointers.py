"""Pointer files and their compare-and-swap: ``models/PUBLISHED`` and ``indexes/CURRENT``.

A pointer is a small text file naming one version. Swapping it is how a model is promoted and an
index published, so two writers must never both win: on gs:// a generation precondition, locally
an exclusive ``flock`` on ``POINTER.lock`` (released by the kernel when its holder dies, even on
kill -9, so a crash never wedges later swaps) around a read-compare-atomic-rename. A pointer
that exists but holds no value is an error, never "absent".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from core import gcs, storage
from core.storage import StorageError


class PointerConflict(StorageError):
    """A compare-and-swap lost: somebody else changed the pointer first."""


class PointerLocked(PointerConflict):
    """A local swap found another live swap holding the pointer's lock for too long."""


class PointerError(StorageError):
    """A pointer file exists but holds no usable value (empty, several lines, not UTF-8)."""


# How long a local swap waits for another one to finish. A swap holds the lock for milliseconds
# (read a few bytes, write a few bytes); a holder past this is stuck, not busy.
LOCK_WAIT_S = 10.0


@dataclass(frozen=True)
class Pointer:
    """The content of a pointer file and the version token a swap must match.

    ``token`` is the GCS generation, or the content itself locally; None when absent.
    """

    value: str | None
    token: str | None


def read_pointer(uri: str) -> Pointer:
    """The pointer's value, or ``Pointer(None, None)`` when the file does not exist.

    Raises PointerError when it exists but holds no value (empty, several lines, not UTF-8):
    vsearch writes pointers atomically, so such a file was written by something else, and
    guessing what it meant would publish the wrong thing.
    """
    uri = storage.normalize(uri)
    if storage.is_gcs(uri):
        bucket, name = gcs.split(uri)
        blob = gcs.client().bucket(bucket).get_blob(name)
        if blob is None:
            return Pointer(None, None)
        return Pointer(_pointer_value(uri, blob.download_as_bytes()), str(blob.generation))
    try:
        with open(uri, "rb") as f:
            value = _pointer_value(uri, f.read())
    except FileNotFoundError:
        return Pointer(None, None)
    return Pointer(value, value)


def _pointer_value(uri: str, raw: bytes) -> str:
    rm = "gcloud storage rm" if storage.is_gcs(uri) else "rm"
    remedy = f"delete it (`{rm} {uri}`) and run the command that sets it again"
    try:
        lines = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise PointerError(f"pointer {uri} is not UTF-8 text: {remedy}") from None
    if not lines:
        raise PointerError(f"pointer {uri} is empty (it exists but names nothing): {remedy}")
    if len(lines) > 1:
        raise PointerError(f"pointer {uri} holds {len(lines)} lines, not one value: {remedy}")
    return lines[0]


def compare_and_swap(
    uri: str, new_value: str, expected: Pointer, *, lock_wait_s: float = LOCK_WAIT_S
) -> None:
    """Set the pointer to ``new_value`` only if it still is ``expected``.

    Raises PointerConflict when another writer got there first: of two concurrent publishers
    that read the same pointer, exactly one wins. On GCS the write carries a generation
    precondition (no lock). Locally the read-compare-write runs under an exclusive ``flock`` on
    ``URI.lock``: the kernel releases it when its holder exits, even on kill -9, so a crashed
    publisher never leaves a lock behind (the file stays; only the lock on it counts). A swap
    that waits ``lock_wait_s`` for a live holder raises PointerLocked naming that process.
    """
    uri = storage.normalize(uri)
    if storage.is_gcs(uri):
        from google.api_core.exceptions import PreconditionFailed

        bucket, name = gcs.split(uri)
        generation = int(expected.token) if expected.token is not None else 0
        try:
            gcs.client().bucket(bucket).blob(name).upload_from_string(
                new_value + "\n", if_generation_match=generation
            )
        except PreconditionFailed as e:
            raise PointerConflict(
                f"{uri} changed since it was read (expected {expected.value!r}); not swapped"
            ) from e
        return
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    with _swap_lock(uri + ".lock", lock_wait_s):
        current = read_pointer(uri)
        if current.token != expected.token:
            raise PointerConflict(
                f"{uri} is {current.value!r}, expected {expected.value!r}; not swapped"
            )
        storage.write_text(uri, new_value + "\n")


@contextlib.contextmanager
def _swap_lock(lock: str, wait_s: float) -> Iterator[None]:
    """An exclusive flock on ``lock``; its content names the holder, for the operator only.

    The file is never deleted: deleting a flock'ed file lets a late opener lock an orphaned inode
    while a newcomer locks a fresh one, and both would swap.
    """
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PointerLocked(_stuck_lock_message(lock, wait_s)) from None
                time.sleep(0.01)
            except OSError as e:  # e.g. a FUSE mount without locks: never swap unlocked
                raise StorageError(f"cannot lock {lock} ({e}); use a gs:// workdir there") from e
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode() + b"\n", 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: name nobody
    finally:
        os.close(fd)  # closing releases the flock


def _stuck_lock_message(lock: str, wait_s: float) -> str:
    stuck = "a swap takes milliseconds, so it is stuck; its lock goes when it exits. Then retry"
    try:
        with open(lock, encoding="utf-8") as f:
            owner = json.loads(f.read())
        pid, host, age = int(owner["pid"]), str(owner["host"]), time.time() - owner["since"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{lock} locked for over {wait_s:g} s (holder: `fuser -v {lock}`); {stuck}"
    return f"{lock} held {age:.0f} s by pid {pid} on host {host} (stop it on {host}: `kill {pid}`); {stuck}"
