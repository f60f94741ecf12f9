"""Object metadata keys: how the daily embed recognises an unchanged photo without its bytes.

A metadata key is a short string that changes whenever an object's bytes change (under the
guarantee below). On gs:// it comes from *listings*, never from one request per object; locally
from one system call per file:

* gs://: ``list_blobs`` pages of 1,000 objects under a prefix (the photo's folder plus the first
  ``GCS_PREFIX_CHARS`` characters of its name, so that one flat folder of 100M photos is listed as
  many prefixes in parallel). The key is the object's MD5 (a content hash, so a re-upload of the
  same bytes is still recognised); composite objects have no MD5, so there it is
  ``generation + crc32c + size``.
* local files: one ``stat`` per photo, where the catalog is read: ``size + mtime_ns``. No folder
  is listed: a listing would stat every file of the folder anyway, and its readdir costs as much
  again (630k photos in 223k folders: 1.8 s for the stats alone, 5.4 s for scandir + stat). A
  bucket mounted through FUSE (gcsfuse) is a local path whose every stat is a request: give its
  photos as gs:// URIs instead.

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
import stat
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import gcs, storage

GCS_PREFIX_CHARS = 2  # 36^2 prefixes per flat folder: enough parallel listings, few tiny ones
GCS_PAGE_SIZE = 1000  # the API's maximum page


def listing_unit(uri: str) -> str:
    """The gs:// prefix whose listing tells ``uri``'s metadata (one listing serves many photos)."""
    folder, _, name = storage.normalize(uri).rpartition("/")
    return f"{folder}/{name[:GCS_PREFIX_CHARS]}"


def list_units(units: Sequence[str]) -> tuple[pa.Array, pa.Array]:
    """(URIs, metadata keys) of every object directly under each gs:// listing unit, listed
    ``storage.IO_THREADS`` at a time (each call waits on the network); a missing prefix lists
    nothing (its photos are then read, and dead-lettered when they are missing)."""
    uris, keys = [pa.array([], pa.string())], [pa.array([], pa.string())]
    for listed in storage.map_io(lambda u: list(_list_gcs(u)), units, remote=True):
        uris.append(pa.array([uri for uri, _ in listed], pa.string()))
        keys.append(pa.array([k for _, k in listed], pa.string()))
    return pa.concat_arrays(uris), pa.concat_arrays(keys)


def stat_keys(paths: Sequence[str]) -> pa.Array:
    """The metadata key of each local file, by one ``stat`` each: "" where there is no regular
    file (the photo is then read, and dead-lettered when it is missing)."""
    sizes = np.zeros(len(paths), np.int64)
    mtimes = np.zeros(len(paths), np.int64)
    found = np.zeros(len(paths), bool)
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # missing, unreadable folder, NUL in the name
            continue
        if stat.S_ISREG(st.st_mode):
            sizes[i], mtimes[i], found[i] = st.st_size, st.st_mtime_ns, True
    key = pc.binary_join_element_wise(
        "size=",
        pa.array(sizes).cast(pa.string()),
        ";mtime_ns=",
        pa.array(mtimes).cast(pa.string()),
        "",
    )
    return pc.if_else(pa.array(found), key, "")


def _list_gcs(unit: str) -> Iterator[tuple[str, str]]:
    bucket, prefix = gcs.split(unit)
    blobs = gcs.client().list_blobs(bucket, prefix=prefix, delimiter="/", page_size=GCS_PAGE_SIZE)
    for b in blobs:
        yield f"gs://{bucket}/{b.name}", gcs_key(b.md5_hash, b.generation, b.crc32c, b.size)


def gcs_key(md5: str | None, generation: int | None, crc32c: str | None, size: int | None) -> str:
    if md5:
        return f"md5={base64.b64decode(md5).hex()}"
    return f"gen={generation};crc32c={crc32c};size={size}"
