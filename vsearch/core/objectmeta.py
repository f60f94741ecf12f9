"""Object metadata keys: how the daily embed recognises an unchanged photo without its bytes.

A metadata key is a short string that changes whenever an object's bytes change (under the
guarantee below). It comes from *listings*, never from one request per object:

* gs://: ``list_blobs`` pages of 1,000 objects under a prefix (the photo's folder plus the first
  ``GCS_PREFIX_CHARS`` characters of its name, so that one flat folder of 100M photos is listed as
  many prefixes in parallel). The key is the object's MD5 (a content hash, so a re-upload of the
  same bytes is still recognised); composite objects have no MD5, so there it is
  ``generation + crc32c + size``.
* local files: one ``os.scandir`` per folder: ``size + mtime_ns``.

What a marketplace must guarantee: an image URI whose bytes change also changes its metadata
(always true on GCS: any write creates a new generation, MD5 and crc32c; locally, a writer that
restores an old mtime on purpose, or two writes of the same size within the filesystem's mtime
resolution, break it). When it does not hold, the photo keeps its previous embedding until its
metadata changes or the model is re-embedded with ``--full``; the sha256 in the Parquet is still
the hash of the bytes that were embedded, so the mismatch is detectable by a sample audit.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from vsearch.core import storage

GCS_PREFIX_CHARS = 2  # 36^2 prefixes per flat folder: enough parallel listings, few tiny ones
GCS_PAGE_SIZE = 1000  # the API's maximum page


def listing_unit(uri: str) -> str:
    """The prefix whose listing tells ``uri``'s metadata (one listing serves many photos)."""
    uri = storage.normalize(uri)
    if storage.is_gcs(uri):
        folder, _, name = uri.rpartition("/")
        return f"{folder}/{name[:GCS_PREFIX_CHARS]}"
    return os.path.dirname(uri)


def list_units(units: Sequence[str]) -> tuple[pa.Array, pa.Array]:
    """(URIs, metadata keys) of every object directly under each listing unit; a missing folder
    or prefix lists nothing (its photos are then read, and dead-lettered when they are missing).

    Local folders are listed one after another (a scandir is a fast system call, and a thread
    pool's per-task locks cost more than the 40k scandirs of a 112k-photo catalog), their keys
    built on whole columns; gs:// prefixes ``storage.IO_THREADS`` at a time (``storage.map_io``).
    """
    paths_, sizes, mtimes = _scan_local([u for u in units if not storage.is_gcs(u)])
    key = pc.binary_join_element_wise(
        "size=",
        pa.array(sizes, pa.int64()).cast(pa.string()),
        ";mtime_ns=",
        pa.array(mtimes, pa.int64()).cast(pa.string()),
        "",
    )
    uris, keys = [pa.array(paths_, pa.string())], [key]
    remote = [u for u in units if storage.is_gcs(u)]
    for listed in storage.map_io(lambda u: list(_list_gcs(u)), remote, remote=True):
        uris.append(pa.array([uri for uri, _ in listed], pa.string()))
        keys.append(pa.array([k for _, k in listed], pa.string()))
    return pa.concat_arrays(uris), pa.concat_arrays(keys)


def _scan_local(folders: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
    """Paths, sizes and mtimes (ns) of the files in each folder: one scandir and a stat each."""
    paths_: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if e.is_file(follow_symlinks=True):
                        st = e.stat(follow_symlinks=True)
                        paths_.append(e.path)
                        sizes.append(st.st_size)
                        mtimes.append(st.st_mtime_ns)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return paths_, sizes, mtimes


def _list_gcs(unit: str) -> Iterator[tuple[str, str]]:
    bucket, prefix = storage.split_gcs(unit)
    blobs = storage.gcs_client().list_blobs(
        bucket, prefix=prefix, delimiter="/", page_size=GCS_PAGE_SIZE
    )
    for b in blobs:
        yield f"gs://{bucket}/{b.name}", gcs_key(b.md5_hash, b.generation, b.crc32c, b.size)


def gcs_key(md5: str | None, generation: int | None, crc32c: str | None, size: int | None) -> str:
    if md5:
        return f"md5={base64.b64decode(md5).hex()}"
    return f"gen={generation};crc32c={crc32c};size={size}"
