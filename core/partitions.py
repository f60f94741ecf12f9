"""Committing a day's partition as a whole: readers see the old file set or the new, never a mix.

The commit record is ``dt=D/_manifest.json`` ({"attempt", "files": [{"name", "rows", "bytes"}],
"rows"}, plus what the writer adds, e.g. the embed state's ``basis``); hive readers skip it
(leading ``_``) and the package's readers follow it. Its ``attempt`` names the commit: a re-run
of the day commits under a new one (the commit id ``committed`` returns). A run always
writes its files to a staging folder outside the model's folder first (invisible to everyone).

* Local filesystem: a directory swap. The staged folder is completed (files + manifest) and then
  exchanged with ``dt=D`` in one ``renameat2(RENAME_EXCHANGE)`` (Linux), or renamed into place
  when the day is new. Every reader, pandas and DuckDB on the plain folder included, sees either
  the whole old folder or the whole new one; a kill -9 at any point leaves one of them in place
  and, at worst, the other in staging (removed by the next run of that day).
* gs:// (no directories to swap): each attempt's files get names unique to the attempt
  (``part-NNNNN-of-NNNNN.<attempt>.parquet``), so a new run never overwrites an old file; the
  single-object write of ``_manifest.json`` is the commit point; files the manifest does not name
  are deleted afterwards. Readers that follow the manifest (``committed_files``, docs/formats.md's
  DuckDB query over the manifest's files, a BigQuery manifest table) see exactly one set at every
  instant. A plain wildcard over the folder can see both sets between the commit and the clean
  up (seconds, or until the next run of that day when the process died in between).

Without ``renameat2`` (non-Linux), the local swap falls back to two renames: a reader in between
sees the day missing (never a mix); a crash in between leaves the day missing (the previous
folder waits in staging as ``<attempt>.old``) until the next run of that day publishes it again.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from core import gcs, storage

MANIFEST = "_manifest.json"
_DAY_FILE = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/[^/]+$")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

StepHook = Callable[[str], None]  # called with a step's name before it runs (tests kill there)


def _no_hook(_: str) -> None:
    return None


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two directories (Linux renameat2); False when the call is unavailable."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = fn(_AT_FDCWD, a.encode(), _AT_FDCWD, b.encode(), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (38, 22):  # ENOSYS, EINVAL: the filesystem cannot exchange
            return False
        raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")
    return True


def read_manifest(partition: str, listed: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The partition's manifest, or None when it has none. ``listed``: the partition's files from
    a listing the caller already made, which tells whether there is a manifest without asking
    the store again (no existence check per partition)."""
    uri = storage.join(partition, MANIFEST)
    if listed is not None:
        if not any(storage.basename(u) == MANIFEST for u in listed):
            return None
    elif not storage.exists(uri):
        return None
    try:
        m = json.loads(storage.read_text(uri))
        _ = [f["name"] for f in m["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{uri} is not a partition manifest: {e}") from e
    return dict(m)


def committed(partition: str, listed: list[str]) -> tuple[list[str], str]:
    """(the partition's committed data files, its commit id): the manifest's files and
    ``attempt``, else (an older partition written before manifests existed) every
    ``part-*.parquet`` listed in it and ""."""
    m = read_manifest(partition, listed)
    if m is None:
        return sorted(u for u in listed if storage.basename(u).startswith("part-")), ""
    return manifest_files(partition, m), str(m["attempt"])


def manifest_files(partition: str, manifest: Mapping[str, Any]) -> list[str]:
    """The data files a manifest (``read_manifest``'s) commits in ``partition``."""
    return [storage.join(partition, f["name"]) for f in manifest["files"]]


def committed_files(partition: str, listed: list[str]) -> list[str]:
    return committed(partition, listed)[0]


class Committed(NamedTuple):
    files: list[str]  # sorted
    commit: str  # the attempt that committed the partition ("" before manifests)


def listed_days(root: str) -> dict[dt.date, list[str]]:
    """The files of each daily partition (``root/dt=YYYY-MM-DD/``), from one listing of root."""
    by_day: dict[dt.date, list[str]] = {}
    for uri in storage.list_prefix(root):
        m = _DAY_FILE.search(uri.replace("\\", "/"))
        if m:
            by_day.setdefault(dt.date.fromisoformat(m.group(1)), []).append(uri)
    return by_day


def committed_days(root: str, listed: Mapping[dt.date, list[str]]) -> dict[dt.date, Committed]:
    """``committed`` of each listed day under ``root``, by day (sorted), leaving out the days
    with no committed file. One manifest read a day (a year of daily partitions is ~365 requests
    on gs://), ``storage.IO_THREADS`` at a time there."""
    days = sorted(listed)

    def one(day: dt.date) -> tuple[list[str], str]:
        return committed(storage.join(root, f"dt={day.isoformat()}"), listed[day])

    found = storage.map_io(one, days, remote=storage.is_gcs(root))
    return {d: Committed(sorted(f), c) for d, (f, c) in zip(days, found, strict=True) if f}


def publish(
    staged: str,
    partition: str,
    attempt: str,
    files: list[tuple[str, int]],
    *,
    extra: Mapping[str, Any] | None = None,
    step: StepHook = _no_hook,
) -> None:
    """Make ``files`` ((staged uri, rows)) the whole content of ``partition``, atomically;
    ``extra`` goes into the manifest, committed with the files."""
    listed = storage.list_sizes(staged)  # on gs:// one listing, not a request per file
    sizes = {u: listed[u] if u in listed else _size(u) for u, _ in files}
    more = dict(extra or {})
    if storage.is_gcs(partition):
        _publish_gcs(staged, partition, attempt, files, sizes, step, more)
    else:
        _publish_local(staged, partition, attempt, files, sizes, step, more)


def _manifest(attempt: str, entries: list[tuple[str, int, int]], extra: dict[str, Any]) -> str:
    return json.dumps(
        {
            **extra,
            "attempt": attempt,
            "rows": sum(r for _, r, _ in entries),
            "files": [{"name": n, "rows": r, "bytes": b} for n, r, b in entries],
        },
        indent=1,
    )


def _publish_local(
    staged: str,
    partition: str,
    attempt: str,
    files: list[tuple[str, int]],
    sizes: dict[str, int],
    step: StepHook,
    extra: dict[str, Any],
) -> None:
    staged, partition = storage.normalize(staged), storage.normalize(partition)
    entries = [(storage.basename(u), r, sizes[u]) for u, r in sorted(files)]
    keep = {n for n, _, _ in entries}
    for u in storage.list_prefix(staged):  # stray files of the staging folder never get published
        if storage.basename(u) not in keep:
            storage.delete([u])
    step("manifest")
    storage.write_text(os.path.join(staged, MANIFEST), _manifest(attempt, entries, extra))
    _fsync_dir(staged)
    step("swap")
    os.makedirs(os.path.dirname(partition), exist_ok=True)
    if not os.path.isdir(partition):
        os.rename(staged, partition)
    elif not _exchange(staged, partition):
        old = staged + ".old"
        os.rename(partition, old)
        step("swap-fallback")
        os.rename(staged, partition)
        staged = old
    _fsync_dir(os.path.dirname(partition))
    step("cleanup")
    storage.delete_prefix(staged)  # now the previous partition (or nothing)
    _rmtree_empty(staged)


def _publish_gcs(
    staged: str,
    partition: str,
    attempt: str,
    files: list[tuple[str, int]],
    sizes: dict[str, int],
    step: StepHook,
    extra: dict[str, Any],
) -> None:
    def final_name(uri: str) -> str:
        name = storage.basename(uri)
        stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
        return f"{stem}.{attempt}.parquet"

    def copy(uri: str) -> None:
        step(f"copy {storage.basename(uri)}")
        storage.rename(uri, storage.join(partition, final_name(uri)))

    # Every copy finishes (or the run fails) before the manifest names them: readers never see
    # a file the manifest names but the bucket lacks. Copies are independent requests, so they
    # go ``storage.IO_THREADS`` at a time (a full day at scale is thousands of files).
    ordered = sorted(files)
    storage.map_io(copy, [u for u, _ in ordered], remote=True)
    entries = [(final_name(u), rows, sizes[u]) for u, rows in ordered]
    step("manifest")
    storage.write_text(storage.join(partition, MANIFEST), _manifest(attempt, entries, extra))
    step("cleanup")
    keep = {n for n, _, _ in entries} | {MANIFEST}
    storage.delete([u for u in storage.list_prefix(partition) if storage.basename(u) not in keep])
    storage.delete_prefix(staged)


def _size(uri: str) -> int:
    uri = storage.normalize(uri)
    if storage.is_gcs(uri):
        bucket, name = gcs.split(uri)
        blob = gcs.client().bucket(bucket).get_blob(name)
        return int(blob.size) if blob is not None else 0
    return os.path.getsize(uri)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree_empty(path: str) -> None:
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass
