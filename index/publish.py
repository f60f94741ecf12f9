"""Publishing an index build: point ``WORKDIR/indexes/CURRENT`` at a validated manifest, atomically
(the stage, ``vsearch publish``, is pipelines/publish.py).

The flip is a compare-and-swap on the pointer (GCS generation precondition; locally a kernel
``flock`` around an atomic rename, released even when a publisher is killed): of two publishers
that read the same CURRENT, exactly one wins and the other gets PointerConflict. An empty or
garbled CURRENT or models/PUBLISHED is an error (PointerError), never taken as "absent".
Readers see either the old index or the new one, never a mix.

Nothing unverified is published: before the flip, every file of the build is hashed against its
manifest sha256 (shards, id maps, PCA, merged files), then the index is loaded and searched
(a few seeded queries). A failure raises PublishError naming the file or the check, and CURRENT
is not touched. A build that passed and became CURRENT gets ``verified.json`` beside its
manifest: it is a "good" build, where a service falls back when CURRENT cannot be loaded
(vsearch/serve/holder.py).

Old builds stay readable until retention removes them; never removed: the CURRENT build, the
build CURRENT named before (replicas still serve it until they swap), the newest other verified
build (the last good one), and builds newer than CURRENT (possibly still being written).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass

import numpy as np

from core import paths, pointers, storage
from index import checksums, shard_plan
from index import manifest as manifest_mod

log = logging.getLogger(__name__)

DEFAULT_RETENTION = 3  # validated builds kept (CURRENT included): room to roll back twice
VERIFIED_FILE = "verified.json"  # in a build dir: publish verified it and CURRENT named it
TEST_QUERIES = 8  # seeded random queries of the test search: enough to touch every shard
TEST_K = 10


class PublishError(RuntimeError):
    """The build failed verification (a file's sha256, its load or a test search); CURRENT
    was not touched. The message names the file or the check."""


@dataclass(frozen=True)
class PublishResult:
    manifest_uri: str  # what indexes/CURRENT points at now
    previous: str | None  # the manifest CURRENT pointed at before
    removed_builds: tuple[str, ...]  # build directories deleted by retention


def indexes_root(workdir: str) -> str:
    return storage.parent(paths.current_index_pointer(workdir))


def build_files(workdir: str) -> dict[str, set[str]]:
    """Every build directory under ``indexes/`` -> the names of the files directly in it."""
    root = indexes_root(workdir)
    builds: dict[str, set[str]] = {}
    for uri in storage.list_prefix(root):
        rel = uri[len(root) :].replace("\\", "/").strip("/").split("/")
        if len(rel) != 3:  # VERSION/BUILD_ID/FILE; CURRENT and its lock are shallower
            continue
        builds.setdefault(storage.join(root, rel[0], rel[1]), set()).add(rel[2])
    return builds


def list_builds(workdir: str) -> dict[str, bool]:
    """Every build directory under ``indexes/`` -> whether it holds a manifest."""
    return {b: shard_plan.MANIFEST_FILE in f for b, f in build_files(workdir).items()}


def verified_record(manifest_uri: str) -> str | None:
    """The build's ``verified.json`` as written by its last publish (None: never verified).

    Each publish rewrites it, so a service that refused a CURRENT can tell that the same
    manifest was published again (after a repair) and load it again."""
    uri = storage.join(storage.parent(storage.normalize(manifest_uri)), VERIFIED_FILE)
    try:
        return storage.read_text(uri) if storage.exists(uri) else None
    except storage.StorageError:
        return None


def verified_manifests(workdir: str) -> list[str]:
    """Manifests of the builds publish verified and made CURRENT once, newest build first
    (where a service falls back when CURRENT cannot be loaded)."""
    good = [
        b
        for b, f in build_files(workdir).items()
        if shard_plan.MANIFEST_FILE in f and VERIFIED_FILE in f
    ]
    return [storage.join(b, shard_plan.MANIFEST_FILE) for b in sorted(good, key=storage.basename)][
        ::-1
    ]


def latest_manifest(workdir: str, model_version: str) -> str:
    """The newest build of ``model_version`` that has a manifest (validated builds only have one)."""
    builds = [
        b
        for b, has in list_builds(workdir).items()
        if has and storage.basename(storage.parent(b)) == model_version
    ]
    if not builds:
        raise FileNotFoundError(
            f"no built index for model {model_version} under {indexes_root(workdir)} "
            "(run vsearch build-index first)"
        )
    return storage.join(max(builds, key=storage.basename), shard_plan.MANIFEST_FILE)


def publish(
    workdir: str,
    manifest_uri: str,
    retention: int = DEFAULT_RETENTION,
    *,
    min_recall: float = 0.0,
    expected: pointers.Pointer | None = None,
) -> PublishResult:
    """Flip CURRENT to ``manifest_uri`` if it is validated, then apply retention.

    ``expected`` is the CURRENT value the caller based its decision on (read now if None).
    Raises ManifestError for an unvalidated or broken manifest, PublishError for a build that
    fails verification (a file's sha256, the load, the test search), and PointerConflict when
    another publisher changed CURRENT first. CURRENT is untouched by every one of them.
    """
    if retention < 1:
        raise ValueError(f"retention must keep at least the published build, got {retention}")
    manifest_uri = storage.normalize(manifest_uri)
    m = manifest_mod.read(manifest_uri)
    manifest_mod.require_validated(m, manifest_uri, min_recall)
    build_dir = storage.parent(manifest_uri)
    for name in m.files():
        if not storage.exists(storage.join(build_dir, name)):
            raise manifest_mod.ManifestError(f"{manifest_uri} lists {name}, which is missing")
    published = pointers.read_pointer(paths.published_model_pointer(workdir)).value
    if published is not None and published != m.model_version:
        raise manifest_mod.ManifestError(
            f"{manifest_uri} indexes model {m.model_version} but models/PUBLISHED is {published}: "
            "rebuild the index for the published model"
        )
    verify_build(manifest_uri, m)
    pointer_uri = paths.current_index_pointer(workdir)
    current = expected if expected is not None else pointers.read_pointer(pointer_uri)
    if current.value != manifest_uri:
        try:
            pointers.compare_and_swap(pointer_uri, manifest_uri, current)
        except pointers.PointerLocked as e:  # a stuck swap, not a lost race: say which process
            raise pointers.PointerLocked(f"not published: {e}") from e
        except pointers.PointerConflict as e:
            raise pointers.PointerConflict(
                f"not published: another publisher changed {pointer_uri} first ({e}); "
                "read CURRENT again and retry if this build should still win"
            ) from e
    record = {"manifest": manifest_uri, "verified_at": dt.datetime.now(dt.UTC).isoformat()}
    storage.write_text(storage.join(build_dir, VERIFIED_FILE), json.dumps(record) + "\n")
    removed = apply_retention(workdir, retention, manifest_uri, current.value)
    log.info("published %s (was %s)", manifest_uri, current.value)
    return PublishResult(manifest_uri, current.value, removed)


def verify_build(manifest_uri: str, m: manifest_mod.Manifest) -> None:
    """Every file against its manifest sha256, then a load and a test search; PublishError
    (naming the file or the check) otherwise. A gs:// build is downloaded once, into a
    temporary folder that the load then reads."""
    from index.searcher import Searcher  # faiss: loaded by a publish, not by every command

    build_dir = storage.parent(manifest_uri)
    with tempfile.TemporaryDirectory(prefix="vsearch-publish-") as cache:
        try:
            checksums.verify_build(m, build_dir, cache)
            # Shards searched one by one, memory-mapped: no merged copy of the index in RAM.
            with Searcher(m, build_dir, cache_dir=cache, merge_ivf=False, threads=1) as searcher:
                rng = np.random.default_rng(0)
                q = rng.standard_normal((TEST_QUERIES, m.input_dim)).astype(np.float32)
                found = searcher.search_vectors(
                    q / np.linalg.norm(q, axis=1, keepdims=True), TEST_K
                )
        except Exception as e:  # any failure to verify, load or search: never published
            raise PublishError(f"not published (CURRENT unchanged): {e}") from e
    hits = [h for per_query in found for h in per_query]
    if not hits or not all(np.isfinite(h.score) and h.listing_id for h in hits):
        raise PublishError(
            f"not published (CURRENT unchanged): a test search of {manifest_uri} returned "
            f"{len(hits)} hit(s) for {TEST_QUERIES} queries, some without a listing or a score"
        )


def apply_retention(
    workdir: str, retention: int, current_manifest: str, previous_manifest: str | None = None
) -> tuple[str, ...]:
    """Delete builds beyond the newest ``retention`` validated ones.

    Never deleted: the CURRENT build; ``previous_manifest``'s build (what CURRENT named before:
    services serve it until they poll); the newest other verified build (the last good one,
    where a service falls back); any build newer than CURRENT (a build still being written has
    no manifest yet, and may be published next).
    """
    current_build = storage.parent(storage.normalize(current_manifest))
    current_id = storage.basename(current_build)
    files = build_files(workdir)
    builds = {b: shard_plan.MANIFEST_FILE in f for b, f in files.items()}
    validated = sorted((b for b, has in builds.items() if has), key=storage.basename, reverse=True)
    last_good = [b for b in validated if VERIFIED_FILE in files[b] and b != current_build][:1]
    keep = {current_build, *validated[:retention], *last_good}
    if previous_manifest:
        keep.add(storage.parent(storage.normalize(previous_manifest)))
    keep |= {b for b in builds if storage.basename(b) > current_id}
    removed = tuple(sorted(b for b in builds if b not in keep))
    for b in removed:
        storage.delete_prefix(b)
    return removed
