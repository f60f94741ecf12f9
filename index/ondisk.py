"""Merging IVF shards into one index whose inverted lists live in a file (faiss contrib.ondisk).

At 10M+ vectors the in-memory merge done at load (index/loaded_index.py) needs RAM for
every code. Here the shards are memory-mapped and their lists streamed into one
``merged.ivfdata`` file (faiss ``OnDiskInvertedLists``); ``merged.faiss`` holds the quantizer and
points at that file by name, so the pair can be moved together and served memory-mapped: resident
memory is the quantizer plus the pages the probed lists touch.

Shards keep their shard-tagged ids (shard_plan.tag_ids), so a hit of the merged index maps back to
(shard, row) exactly as a hit of the in-memory merge does. Plain IVF layouts only (IVF-Flat,
IVF-PQ): fast-scan lists are packed in blocks, which OnDiskInvertedLists does not store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import faiss
from faiss.contrib.ondisk import merge_ondisk

from core import storage
from index import manifest as manifest_mod
from index.checksums import local_shard, sha256_of_file

MERGED_INDEX = "merged.faiss"
MERGED_LISTS = "merged.ivfdata"


def merge_build(
    build_dir: str,
    entries: tuple[manifest_mod.ShardEntry, ...] | list[manifest_mod.ShardEntry],
    cache_dir: str,
    cache_key: tuple[str, str],
) -> manifest_mod.MergedEntry:
    """Merge a build's shards into ``build_dir``'s merged.faiss + merged.ivfdata; their entry.

    Local builds merge in place. A gs:// build's shards come through the verified local cache
    (checksums.local_shard), are merged in a local folder, and both files are uploaded.
    """
    shard_paths = [local_shard(build_dir, e, cache_dir, cache_key) for e in entries]
    local = not storage.is_gcs(build_dir)
    out_dir = build_dir if local else tempfile.mkdtemp(prefix="vsearch-merge-", dir=cache_dir)
    try:
        merge_on_disk(shard_paths, out_dir)
        files = (MERGED_INDEX, MERGED_LISTS)
        sums = [sha256_of_file(os.path.join(out_dir, f)) for f in files]
        if not local:
            for f in files:  # both before the manifest, which the build writes last
                with open(os.path.join(out_dir, f), "rb") as src:
                    with storage.atomic_writer(storage.join(build_dir, f)) as dst:
                        shutil.copyfileobj(src, dst, 8 << 20)
    finally:
        if not local:
            shutil.rmtree(out_dir, ignore_errors=True)
    return manifest_mod.MergedEntry(MERGED_INDEX, sums[0], MERGED_LISTS, sums[1])


def merge_on_disk(shard_paths: list[str], out_dir: str) -> str:
    """Merge local IVF shard files into ``out_dir/merged.faiss`` + ``merged.ivfdata``; the path
    of merged.faiss. The shards must be copies of one trained index (same quantizer)."""
    if not shard_paths:
        raise ValueError("no shards to merge")
    os.makedirs(out_dir, exist_ok=True)
    index: Any = faiss.read_index(shard_paths[0], faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
    if isinstance(ivf, faiss.IndexIVFFastScan):
        raise ValueError(
            f"{shard_paths[0]} is a fast-scan IVF index: its block-packed lists cannot be merged "
            "on disk (use an IVF,Flat or IVF,PQ layout)"
        )
    # The trained, empty index: shard 0's quantizer with fresh empty lists.
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # type: ignore[attr-defined]  # the index frees it
    index.ntotal = ivf.ntotal = 0
    lists = os.path.join(out_dir, MERGED_LISTS)
    if os.path.exists(lists):
        os.remove(lists)  # OnDiskInvertedLists appends to an existing file
    merge_ondisk(index, shard_paths, lists, shift_ids=False)
    path = os.path.join(out_dir, MERGED_INDEX)
    faiss.write_index(index, path)
    return path


def open_merged(path: str) -> Any:
    """The merged index, its lists memory-mapped from the ivfdata file beside it."""
    return faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
