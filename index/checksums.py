"""Every file of a build verified before use: shards, id maps and pca.bin against the manifest.

A file's bytes are hashed and compared with the manifest's sha256 *before* faiss or pyarrow parse
them, so a corrupted or truncated file is one clear error naming it, never a crash inside faiss
or a silently wrong answer (a flipped byte in an id map's dictionary page can still decode, to
another listing's id). Local shards are checked in place and memory-mapped; gs:// shards are
downloaded (streamed and hashed) into a local cache first. Id maps and pca.bin are small: they
are read into memory once, hashed, and parsed from those same bytes.

Format-1 manifests carry no checksum for id maps and the PCA; those files are read unverified.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from index import manifest as manifest_mod

_CHUNK = 8 << 20


class ShardError(RuntimeError):
    """A shard or id map is missing, corrupted, truncated or inconsistent; names the file."""


def sha256_of_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> str:
    return os.environ.get("VSEARCH_INDEX_CACHE") or os.path.join(
        tempfile.gettempdir(), "vsearch-index-cache"
    )


def _corrupted(uri: str, got: str, want: str, extra: str = "") -> ShardError:
    return ShardError(
        f"{uri} is corrupted or truncated: sha256 {got[:12]}... != manifest {want[:12]}...{extra}"
    )


def verified_bytes(uri: str, sha256: str | None, what: str) -> bytes:
    """The bytes of a small build file, checked against ``sha256`` (None: format 1, unchecked)."""
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as e:
        raise ShardError(f"cannot read {what} {uri}: {e}") from e
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise _corrupted(f"{what} {uri}", got, sha256, f" ({len(data)} bytes)")
    return data


def read_id_map(build_dir: str, entry: manifest_mod.ShardEntry) -> pa.Table:
    """A shard's id map, verified against the manifest before pyarrow parses it."""
    uri = storage.join(build_dir, entry.ids_path)
    data = verified_bytes(uri, entry.ids_sha256 or None, "id map")
    try:
        ids = pq.read_table(pa.BufferReader(data))
    except Exception as e:
        raise ShardError(f"cannot read id map {uri}: {e}") from e
    if ids.num_rows != entry.ntotal:
        raise ShardError(f"id map {uri} has {ids.num_rows} rows, shard has {entry.ntotal}")
    return ids


def local_shard(
    build_dir: str, entry: manifest_mod.ShardEntry, cache_dir: str, cache_key: tuple[str, str]
) -> str:
    """A local path of the shard whose sha256 matches the manifest (gs://: a verified copy)."""
    return local_file(build_dir, entry.path, entry.sha256, cache_dir, cache_key, "index shard")


def local_file(
    build_dir: str, name: str, sha256: str, cache_dir: str, cache_key: tuple[str, str], what: str
) -> str:
    """A local path of the build file ``name`` whose sha256 matches (gs://: a verified copy
    in ``cache_dir/<cache_key>/``, so a build's files share one local folder)."""
    uri = storage.join(build_dir, name)
    if not storage.is_gcs(uri):
        if not os.path.exists(uri):
            raise ShardError(f"{what} {uri} is missing")
        got = sha256_of_file(uri)
        if got != sha256:
            size = f" ({os.path.getsize(uri)} bytes)"
            raise _corrupted(f"{what} {uri}", got, sha256, size)
        return uri
    local = os.path.join(cache_dir, *cache_key, name)
    if os.path.exists(local) and sha256_of_file(local) == sha256:
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f"{local}.tmp-{os.getpid()}"
    h = hashlib.sha256()
    try:
        with storage.open_read(uri) as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
    except Exception as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ShardError(f"cannot download {what} {uri}: {e}") from e
    if h.hexdigest() != sha256:
        os.remove(tmp)
        raise _corrupted(f"{what} {uri}", h.hexdigest(), sha256)
    os.replace(tmp, local)
    return local


def verify_build(manifest: manifest_mod.Manifest, build_dir: str, cache_dir: str) -> None:
    """Hash every file of the build against its manifest sha256 (publish's first check).

    ShardError names the first file that is missing or differs. gs:// files are downloaded into
    ``cache_dir`` as they are hashed, where a Searcher given that cache finds them verified.
    A format-1 manifest has files without a sha256: ShardError, since they cannot be verified.
    """
    key = (manifest.model_version, manifest.build_id)
    for name, sha256, what in manifest.checksums():
        if sha256 is None:
            raise ShardError(
                f"{what} {storage.join(build_dir, name)} has no sha256 in its manifest (format "
                f"{manifest.format_version}): it cannot be verified; rebuild with vsearch build-index"
            )
        local_file(build_dir, name, sha256, cache_dir, key, what)
