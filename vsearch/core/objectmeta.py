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
from collections.abc import Iterator

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


def list_unit(unit: str) -> Iterator[tuple[str, str]]:
    """(uri, metadata key) of every object directly under a listing unit; a missing folder or
    prefix lists nothing (its photos are then read, and dead-lettered when they are missing)."""
    if storage.is_gcs(unit):
        yield from _list_gcs(unit)
        return
    try:
        with os.scandir(unit) as it:
            for e in it:
                if e.is_file(follow_symlinks=True):
                    st = e.stat(follow_symlinks=True)
                    yield e.path, f"size={st.st_size};mtime_ns={st.st_mtime_ns}"
    except (FileNotFoundError, NotADirectoryError):
        return


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
