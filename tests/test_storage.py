"""The storage layer behaves the same on local paths and on gs:// (loopback GCS server)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from core import pointers, storage


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_bucket") + "/prefix"


def test_write_read_list_rename_delete(root: str) -> None:
    a = storage.join(root, "d", "a.txt")
    storage.write_text(a, "hello")
    assert storage.read_text(a) == "hello"
    assert storage.exists(a)
    assert storage.glob(storage.join(root, "d", "*.txt")) == [storage.normalize(a)]
    b = storage.join(root, "d", "b.txt")
    storage.rename(a, b)
    assert not storage.exists(a) and storage.read_text(b) == "hello"
    assert storage.list_prefix(storage.join(root, "d")) == [storage.normalize(b)]
    storage.delete_prefix(storage.join(root, "d"))
    assert storage.list_prefix(storage.join(root, "d")) == []


def test_glob_reads_patterns_as_beam_does(root: str) -> None:
    for name in ("dt=1/a.json", "dt=1/.hidden.json", "dt=2/b.json", "dt=2/deep/c.json", "x.txt"):
        storage.write_text(storage.join(root, *name.split("/")), name)
    found = storage.glob(storage.join(root, "dt=*", "*.json"))  # '*' stays within a segment
    assert found == [
        storage.join(root, n) for n in ("dt=1/.hidden.json", "dt=1/a.json", "dt=2/b.json")
    ]
    deep = storage.glob(storage.join(root, "dt=2", "**.json"))  # '**' crosses '/'
    assert deep == [
        storage.join(root, "dt=2", "b.json"),
        storage.join(root, "dt=2", "deep", "c.json"),
    ]
    assert storage.glob(storage.join(root, "dt=[!1]", "?.json")) == [
        storage.join(root, "dt=2", "b.json")
    ]
    assert storage.glob(storage.join(root, "x.txt")) == [storage.join(root, "x.txt")]  # no wildcard
    assert storage.glob(storage.join(root, "nope", "*.json")) == []
    assert storage.glob(storage.join(root, "dt=*")) == []  # files only, never a folder


def test_open_read_seeks_and_names_a_missing_file(root: str) -> None:
    uri = storage.join(root, "blob.bin")
    storage.write_bytes(uri, bytes(range(256)) * 64)
    with storage.open_read(uri) as f:
        f.seek(-4, os.SEEK_END)
        assert f.read() == bytes([252, 253, 254, 255])
        f.seek(256)
        assert f.read(3) == bytes([0, 1, 2]) and f.tell() == 259
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.open_read(storage.join(root, "nope.bin"))


def test_failed_write_leaves_nothing(root: str) -> None:
    uri = storage.join(root, "partial.bin")
    with pytest.raises(RuntimeError), storage.atomic_writer(uri) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert storage.list_prefix(root) == []


def test_missing_file_error_names_the_uri(root: str) -> None:
    with pytest.raises(storage.StorageError, match="nope.bin"):
        storage.read_bytes(storage.join(root, "nope.bin"))


def test_compare_and_swap_exactly_one_of_two_wins(root: str) -> None:
    ptr = storage.join(root, "CURRENT")
    start = pointers.read_pointer(ptr)
    assert start.value is None
    pointers.compare_and_swap(ptr, "v1", start)
    seen = pointers.read_pointer(ptr)
    assert seen.value == "v1"
    results: list[str] = []
    barrier = threading.Barrier(2)

    def swap(value: str) -> None:
        barrier.wait()
        try:
            pointers.compare_and_swap(ptr, value, seen)
            results.append("won")
        except pointers.PointerConflict:
            results.append("lost")

    threads = [threading.Thread(target=swap, args=(v,)) for v in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost", "won"]
    assert pointers.read_pointer(ptr).value in ("a", "b")


# ------------------------------------------------------------------ pointers: faults an operator meets

# A publisher that stalls inside the compare-and-swap, just before it writes the pointer, so that
# the test can kill it there (kill -9: no finally, no atexit).
_STALL_IN_SWAP = r"""
import sys, time
from core import pointers, storage
pointer, marker = sys.argv[1], sys.argv[2]
real_write = storage.write_text
def stall(uri, text):
    if uri == storage.normalize(pointer):
        open(marker, "w").close()
        time.sleep(600)
    real_write(uri, text)
storage.write_text = stall
pointers.compare_and_swap(pointer, "from-the-killed-publisher", pointers.read_pointer(pointer))
"""


def start_stalled_swap(pointer: str, tmp_path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """A real publisher process, paused inside the swap of ``pointer`` (holding whatever it holds)."""
    marker = tmp_path / f"in-swap-{uuid.uuid4().hex[:6]}"
    child = subprocess.Popen([sys.executable, "-c", _STALL_IN_SWAP, pointer, str(marker)])
    deadline = time.monotonic() + 120  # a guard against a hung child, not a timing assert
    while not marker.exists():
        assert child.poll() is None, "the publisher exited before reaching the swap"
        assert time.monotonic() < deadline, "the publisher never reached the swap"
        time.sleep(0.05)
    return child


@pytest.mark.parametrize("name", ["indexes/CURRENT", "models/PUBLISHED"])
def test_publisher_killed_inside_the_swap_does_not_wedge_later_swaps(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    ptr = storage.join(str(tmp_path / "work"), *name.split("/"))
    pointers.compare_and_swap(ptr, "v1", pointers.read_pointer(ptr))
    child = start_stalled_swap(ptr, tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    seen = pointers.read_pointer(ptr)
    assert seen.value == "v1"  # the killed swap changed nothing
    pointers.compare_and_swap(ptr, "v2", seen)  # and the next publisher is not wedged
    assert pointers.read_pointer(ptr).value == "v2"
    # Two live publishers still never both win after the crash.
    with pytest.raises(pointers.PointerConflict):
        pointers.compare_and_swap(ptr, "v3", seen)


def test_swap_stuck_in_a_live_process_is_reported_with_the_command_to_clear_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ptr = storage.join(str(tmp_path), "indexes", "CURRENT")
    child = start_stalled_swap(ptr, tmp_path)
    try:
        with pytest.raises(pointers.PointerLocked) as e:
            pointers.compare_and_swap(ptr, "mine", pointers.read_pointer(ptr), lock_wait_s=0.2)
        message = str(e.value)
        assert f"pid {child.pid} on host {socket.gethostname()}" in message
        assert f"kill {child.pid}" in message and ptr + ".lock" in message
    finally:
        child.kill()
        child.wait()
    pointers.compare_and_swap(ptr, "mine", pointers.read_pointer(ptr))
    assert pointers.read_pointer(ptr).value == "mine"


@pytest.mark.parametrize(
    ("content", "problem"), [("", "is empty"), ("\n  \n", "is empty"), ("a\nb\n", "2 lines")]
)
def test_empty_or_garbled_pointer_is_reported_as_such(
    root: str, content: str, problem: str
) -> None:
    ptr = storage.join(root, "models", "PUBLISHED")
    storage.write_text(ptr, content)
    with pytest.raises(pointers.PointerError, match=problem) as e:
        pointers.read_pointer(ptr)
    assert storage.normalize(ptr) in str(e.value) and "does not exist" not in str(e.value)
    # Never silently overwritten (locally the swap reads it again; on GCS the generation differs).
    with pytest.raises((pointers.PointerError, pointers.PointerConflict)):
        pointers.compare_and_swap(ptr, "v1", pointers.Pointer(None, None))
    storage.delete([ptr])  # the fix the message gives
    pointers.compare_and_swap(ptr, "v1", pointers.read_pointer(ptr))
    assert pointers.read_pointer(ptr).value == "v1"


def test_swap_from_a_stale_reading_loses(root: str) -> None:
    ptr = storage.join(root, "indexes", "CURRENT")
    absent = pointers.read_pointer(ptr)
    pointers.compare_and_swap(ptr, "a", absent)
    with pytest.raises(pointers.PointerConflict):
        pointers.compare_and_swap(ptr, "b", absent)  # created by somebody else meanwhile
    seen = pointers.read_pointer(ptr)
    pointers.compare_and_swap(ptr, "c", seen)
    with pytest.raises(pointers.PointerConflict):
        pointers.compare_and_swap(ptr, "d", seen)
    assert pointers.read_pointer(ptr).value == "c"
