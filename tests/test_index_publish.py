"""publish: compare-and-swap of CURRENT, concurrent publishers, retention; query CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from benchmarks import embedding_tables, vectors
from core import paths, pointers, runs, storage
from index import builder, checksums, manifest, publish
from index.searcher import Searcher
from vsearch import cli

MODEL = "20260101-test"
DIM = 16


def make_build(workdir: str, build_id: str, **kw) -> str:  # type: ignore[no-untyped-def]
    table = embedding_tables.embedding_table(vectors.clustered(600, dim=DIM), 2, MODEL)
    settings = builder.IndexSettings(
        **{"factory": "Flat", "shards": 2, "validation_queries": 60, "latency_queries": 10, **kw}
    )
    out = paths.index_build_dir(workdir, MODEL, build_id)
    return builder.build_index(
        embedding_tables.batches_factory(table), settings, out, MODEL, build_id
    ).manifest_uri


def test_publish_flips_current_and_searcher_follows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    first, second = (
        make_build(w, "20260101T000000Z-aaaaaa"),
        make_build(w, "20260102T000000Z-bbbbbb"),
    )
    assert publish.publish(w, first).previous is None
    assert Searcher.open(w).manifest.build_id == "20260101T000000Z-aaaaaa"
    r = publish.publish(w, second)
    assert r.previous == first
    assert pointers.read_pointer(paths.current_index_pointer(w)).value == second
    assert Searcher.open(w).manifest.build_id == "20260102T000000Z-bbbbbb"
    assert storage.exists(first)  # old builds stay readable (retention 3)


def test_unvalidated_or_incomplete_builds_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    uri = make_build(w, "20260101T000000Z-aaaaaa")
    d = json.loads(open(uri).read())
    d["validation"] = None
    unvalidated = uri.replace("manifest.json", "unvalidated.json")
    open(unvalidated, "w").write(json.dumps(d))
    with pytest.raises(manifest.ManifestError, match="no validation"):
        publish.publish(w, unvalidated)
    with pytest.raises(manifest.ManifestError, match="below"):
        publish.publish(w, uri, min_recall=1.01)
    storage.delete([storage.join(storage.parent(uri), "shard-00001.ids.parquet")])
    with pytest.raises(manifest.ManifestError, match="shard-00001.ids.parquet, which is missing"):
        publish.publish(w, uri)
    assert pointers.read_pointer(paths.current_index_pointer(w)).value is None
    with pytest.raises(FileNotFoundError, match="no published index"):
        Searcher.open(w)


def test_index_of_another_model_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    uri = make_build(w, "20260101T000000Z-aaaaaa")
    storage.write_text(paths.published_model_pointer(w), "20260202-newer\n")
    with pytest.raises(manifest.ManifestError, match="models/PUBLISHED is 20260202-newer"):
        publish.publish(w, uri)


def test_concurrent_publishers_exactly_one_wins(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    uris = [make_build(w, f"2026010{i}T000000Z-{i}{i}{i}") for i in (1, 2)]
    seen = pointers.read_pointer(paths.current_index_pointer(w))  # both decided on the same CURRENT
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def go(uri: str) -> None:
        barrier.wait()
        try:
            publish.publish(w, uri, expected=seen)
            outcomes[uri] = "won"
        except pointers.PointerConflict as e:
            outcomes[uri] = f"conflict: {e}"

    threads = [threading.Thread(target=go, args=(u,)) for u in uris]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v[:4] for v in outcomes.values()) == ["conf", "won"]
    winner = next(u for u, v in outcomes.items() if v == "won")
    loser = next(v for v in outcomes.values() if v != "won")
    assert "another publisher changed" in loser
    assert pointers.read_pointer(paths.current_index_pointer(w)).value == winner


def _publish_in_process(w: str, uri: str, seen_value: str | None, q) -> None:  # type: ignore[no-untyped-def]
    try:
        publish.publish(w, uri, expected=pointers.Pointer(seen_value, seen_value))
        q.put("won")
    except pointers.PointerConflict:
        q.put("conflict")


def test_concurrent_publishers_in_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    uris = [make_build(w, f"2026010{i}T000000Z-{i}{i}{i}") for i in (1, 2, 3)]
    publish.publish(w, uris[0])
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_publish_in_process, args=(w, u, uris[0], q)) for u in uris[1:]]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(q.get(timeout=5) for _ in procs) == ["conflict", "won"]
    assert pointers.read_pointer(paths.current_index_pointer(w)).value in uris[1:]


def test_retention_never_removes_current_or_newer_builds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    ids = [f"2026010{i}T000000Z-00000{i}" for i in range(1, 6)]
    uris = [make_build(w, b) for b in ids]
    # Publish an older build while newer ones exist (a rollback): they must survive.
    r = publish.publish(w, uris[1], retention=1)
    assert r.removed_builds == (storage.parent(uris[0]),)
    assert all(storage.exists(u) for u in uris[1:])
    r = publish.publish(w, uris[4], retention=2)
    # ids[1] stays: it was in service (replicas swap when they poll) and is the last good build.
    assert {storage.basename(b) for b in r.removed_builds} == {ids[2]}
    assert storage.exists(uris[1]) and storage.exists(uris[3]) and storage.exists(uris[4])
    assert Searcher.open(w).manifest.build_id == ids[4]
    # A rollback to ids[3]: ids[4] stays (in service, last good); ids[1] is neither any more.
    r = publish.publish(w, uris[3], retention=1)
    assert {storage.basename(b) for b in r.removed_builds} == {ids[1]}


def test_publish_cli_picks_latest_build_of_published_model(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    make_build(w, "20260101T000000Z-aaaaaa")
    latest = make_build(w, "20260102T000000Z-bbbbbb")
    storage.write_text(paths.published_model_pointer(w), MODEL + "\n")
    assert cli.main(["publish", "--workdir", w]) == 0
    assert pointers.read_pointer(paths.current_index_pointer(w)).value == latest
    assert "published" in capsys.readouterr().out


# A publisher that stalls inside the swap of CURRENT (just before the write), to be killed there.
_STALLED_PUBLISHER = r"""
import sys, time
from index import publish
from core import paths, pointers, storage
workdir, manifest_uri, marker = sys.argv[1:4]
real_write = storage.write_text
def stall(uri, text):
    if uri == paths.current_index_pointer(workdir):
        open(marker, "w").close()
        time.sleep(600)
    real_write(uri, text)
storage.write_text = stall
publish.publish(workdir, manifest_uri)
"""


def test_publisher_killed_inside_the_swap_does_not_wedge_publishing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path / "work")
    first, second, third = (
        make_build(w, f"2026010{i}T000000Z-{i}{i}{i}{i}{i}{i}") for i in (1, 2, 3)
    )
    publish.publish(w, first)
    marker = tmp_path / "in-swap"
    child = subprocess.Popen(
        [sys.executable, "-c", _STALLED_PUBLISHER, w, second, str(marker)], cwd=os.getcwd()
    )
    deadline = time.monotonic() + 120  # a guard against a hung child, not a timing assert
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, "never reached the swap"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert pointers.read_pointer(paths.current_index_pointer(w)).value == first
    assert publish.publish(w, third).previous == first  # not wedged by the dead publisher
    assert Searcher.open(w).manifest.build_id == "20260103T000000Z-333333"


def test_empty_pointers_are_reported_as_empty_not_missing(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    uri = make_build(w, "20260101T000000Z-aaaaaa")
    current = paths.current_index_pointer(w)
    storage.write_text(current, "")
    for attempt in (lambda: publish.publish(w, uri), lambda: Searcher.open(w)):
        with pytest.raises(pointers.PointerError, match=f"pointer {current} is empty") as e:
            attempt()
        assert "does not exist" not in str(e.value) and f"rm {current}" in str(e.value)
    storage.delete([current])
    published = paths.published_model_pointer(w)
    storage.write_text(published, "\n")
    with pytest.raises(pointers.PointerError, match=f"pointer {published} is empty"):
        publish.publish(w, uri)
    assert cli.main(["publish", "--workdir", w]) == 1
    assert "is empty" in capsys.readouterr().err


def test_a_hand_run_publish_is_done_for_backfill(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A stage run by hand writes its own completion marker: backfill --dry-run will skip it."""
    w = str(tmp_path)
    latest = make_build(w, "20260101T000000Z-aaaaaa")
    storage.write_text(paths.published_model_pointer(w), MODEL + "\n")
    assert cli.main(["publish", "--workdir", w, "--date", "2026-01-01"]) == 0
    assert runs.read_summary(w, "publish", "2026-01-01")["extra"]["manifest_uri"] == latest
    capsys.readouterr()
    argv = ["backfill", "--catalog", "unused", "--workdir", w, "--start", "2026-01-01"]
    assert cli.main([*argv, "--end", "2026-01-02", "--stages", "publish", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "2026-01-01  publish      done, will skip",
        "2026-01-02  publish      will run",
    ]


def test_publish_refuses_a_non_finite_min_recall(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Issue 16 point 2: nan compares false with everything, so it would let any index through."""
    w = str(tmp_path)
    make_build(w, "20260101T000000Z-aaaaaa")
    storage.write_text(paths.published_model_pointer(w), MODEL + "\n")
    for bad in ("nan", "inf", "-inf"):
        assert cli.main(["publish", "--workdir", w, f"--min-recall={bad}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--min-recall" in err and "finite" in err, err
    assert pointers.read_pointer(paths.current_index_pointer(w)).value is None


# ------------------------------------------------------------------ verification before the flip


def _flip_bytes(path: str, at: float = 0.5) -> None:
    """Flip 8 bytes in place (same size: only the checksum can tell)."""
    data = bytearray(open(path, "rb").read())
    mid = int(len(data) * at)
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({}, "shard-00001.faiss"),
        ({}, "shard-00000.ids.parquet"),
        ({"pca_dim": 8, "target_recall": 0.1}, "pca.bin"),
        ({"factory": "IVF8,Flat", "on_disk": True}, "merged.ivfdata"),
    ],
)
def test_a_corrupt_file_is_not_published_and_named(tmp_path, capsys, kw, name) -> None:  # type: ignore[no-untyped-def]
    """Issue 30 point 1: one flipped byte in any file of a build -> publish exits nonzero with
    one line naming that file, and CURRENT still names the build in service."""
    w = str(tmp_path)
    good = make_build(w, "20260101T000000Z-aaaaaa", **kw)
    assert cli.main(["publish", "--workdir", w, "--manifest", good]) == 0
    bad = make_build(w, "20260102T000000Z-bbbbbb", **kw)
    assert name in {n for n, _, _ in manifest.read(bad).checksums()}
    path = os.path.join(os.path.dirname(bad), name)
    _flip_bytes(path)
    capsys.readouterr()
    assert cli.main(["publish", "--workdir", w, "--manifest", bad]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("vsearch publish: error: not published"), err
    assert f"{path} is corrupted or truncated" in err[0], err[0]
    assert pointers.read_pointer(paths.current_index_pointer(w)).value == good
    assert not os.path.exists(os.path.join(os.path.dirname(bad), publish.VERIFIED_FILE))
    assert os.path.exists(os.path.join(os.path.dirname(good), publish.VERIFIED_FILE))


def test_a_truncated_shard_and_a_build_that_cannot_load_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = str(tmp_path)
    uri = make_build(w, "20260101T000000Z-aaaaaa")
    shard = os.path.join(os.path.dirname(uri), "shard-00000.faiss")
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    with pytest.raises(publish.PublishError, match=f"{shard} is corrupted or truncated"):
        publish.publish(w, uri)
    # Bytes that match their sha256 but that faiss cannot read (a bad build, not a bad copy):
    # the load catches it, naming the shard.
    d = json.loads(open(uri).read())
    d["shards"][0]["sha256"] = checksums.sha256_of_file(shard)
    open(uri, "w").write(json.dumps(d))
    with pytest.raises(publish.PublishError, match="faiss cannot read index shard .*shard-00000"):
        publish.publish(w, uri)
    assert pointers.read_pointer(paths.current_index_pointer(w)).value is None


def test_a_format_1_manifest_is_read_but_not_published(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Older manifests stay readable (the Searcher serves them), but their id maps carry no
    sha256, so publish cannot verify them and says so."""
    w = str(tmp_path)
    uri = make_build(w, "20260101T000000Z-aaaaaa")
    d = json.loads(open(uri).read())
    d["format_version"] = 1
    for s in d["shards"]:
        s.pop("ids_sha256")
    d.pop("pca_sha256")
    open(uri, "w").write(json.dumps(d))
    with Searcher.from_manifest_uri(uri) as s:
        assert s.manifest.format_version == 1
    with pytest.raises(publish.PublishError, match="shard-00000.ids.parquet has no sha256"):
        publish.publish(w, uri)
    assert pointers.read_pointer(paths.current_index_pointer(w)).value is None


def test_retention_keeps_the_build_in_service_and_the_last_good_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A refused publish removes nothing; later publishes with retention 1 still keep the
    build CURRENT named before and the newest verified one besides CURRENT."""
    w = str(tmp_path)
    ids = [f"2026010{i}T000000Z-00000{i}" for i in range(1, 5)]
    uris = [make_build(w, b) for b in ids[:2]]
    publish.publish(w, uris[0], retention=1)
    _flip_bytes(os.path.join(os.path.dirname(uris[1]), "shard-00000.faiss"))
    with pytest.raises(publish.PublishError):
        publish.publish(w, uris[1], retention=1)
    assert storage.exists(uris[0]) and storage.exists(uris[1])
    # The bad build is older than the next good one: retention may remove it, never the good.
    uris.append(make_build(w, ids[2]))
    r = publish.publish(w, uris[2], retention=1)
    assert {storage.basename(b) for b in r.removed_builds} == {ids[1]}
    assert storage.exists(uris[0])  # in service until the services swap; the last good one
    assert publish.verified_manifests(w) == [uris[2], uris[0]]
    uris.append(make_build(w, ids[3]))
    r = publish.publish(w, uris[3], retention=1)
    assert {storage.basename(b) for b in r.removed_builds} == {ids[0]}
    assert publish.verified_manifests(w) == [uris[3], uris[2]]
