"""The storage layer behaves the same on local paths and on gs:// (loopback GCS server)."""

from __future__ import annotations

import threading

import pytest

from vsearch.core import storage


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
    start = storage.read_pointer(ptr)
    assert start.value is None
    storage.compare_and_swap(ptr, "v1", start)
    seen = storage.read_pointer(ptr)
    assert seen.value == "v1"
    results: list[str] = []
    barrier = threading.Barrier(2)

    def swap(value: str) -> None:
        barrier.wait()
        try:
            storage.compare_and_swap(ptr, value, seen)
            results.append("won")
        except storage.PointerConflict:
            results.append("lost")

    threads = [threading.Thread(target=swap, args=(v,)) for v in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost", "won"]
    assert storage.read_pointer(ptr).value in ("a", "b")
