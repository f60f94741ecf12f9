"""The embed job's state: which object metadata key had which sha256 (per model version).

``WORKDIR/embed_state/model=VERSION/dt=D/*.parquet`` with (listing_id, image_index, image_uri,
meta_key, image_sha256), one file per change-detection bucket (``bucket_file_name``), committed
like a partition (``_manifest.json``). It lives beside, not inside, the Embedding Parquet folder,
so no downstream reader ever sees it, and it is only a cache: losing it costs one day of reading
every photo again, never a wrong or missing embedding.

A run of day D writes a *snapshot*: one row for every photo of day D's catalog whose (slot,
sha256) had an embedding row once partition D was committed (the photos skipped on their
metadata, those read and recognised by their sha256, and those embedded; never one that was
dead-lettered). Its manifest's ``basis`` names the embedding partitions that were there, by
commit (the ``attempt`` of their manifests). So the next run needs only the newest snapshot, and
while those partitions are unchanged it needs no partition at all: a photo is skipped when the
snapshot names its (slot, URI, key). The daily cost then stays one catalog's worth of rows,
where reading every earlier partition and state grows by a day's changes every day (~1% of
the catalog: twice the rows after 100 days). When a partition of the basis was re-run or
deleted, or a later one exists (a day that committed its partition but not its state), the run
falls back to the full check: the snapshot's rows are skipped only when every earlier partition's
keys confirm them. State written before snapshots (no ``basis``): every earlier day's, checked
the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from core import partitions, paths, storage

SCHEMA = pa.schema(
    [
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("image_index", pa.int16(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("meta_key", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
    ]
)


# A run writes its state one file per change-detection hash bucket
# (``transforms/change_detection.py``): ``kept-B-of-N`` the rows of the photos it skipped,
# ``read-B-of-N`` those of the photos it read. Every row of such a file is in bucket B of N.
_BUCKET_FILE = re.compile(r"(?:kept|read)-(\d{5})-of-(\d{5})\.parquet$")


def bucket_file_name(kind: Literal["kept", "read"], bucket: int, buckets: int) -> str:
    return f"{kind}-{bucket:05d}-of-{buckets:05d}.parquet"


def file_bucket(uri: str, buckets: int) -> int | None:
    """The bucket of every row of ``uri`` when it is a state file split ``buckets`` ways, so the
    next run with as many buckets needs no hash of its rows; else None (split it again: another
    bucket count, or state written before the files were per bucket)."""
    m = _BUCKET_FILE.search(uri)
    if m is None or int(m.group(2)) != buckets:
        return None
    return int(m.group(1))


class Snapshot(NamedTuple):
    """The newest committed state before a day, when it is a snapshot."""

    day: dt.date
    files: list[str]
    basis: dict[str, str]  # embedding partition day (ISO) -> its commit id when state was made


def write_table(uri: str, table: pa.Table) -> int:
    table = table.select(SCHEMA.names).cast(SCHEMA)
    with storage.atomic_writer(uri) as f:
        pq.write_table(table, f, compression="zstd")
    return table.num_rows


def _listed_days(workdir: str, model_version: str, date: dt.date) -> dict[dt.date, list[str]]:
    listed = partitions.listed_days(paths.embed_state_root(workdir, model_version))
    return {d: files for d, files in listed.items() if d < date}


def files_before(workdir: str, model_version: str, date: dt.date) -> list[str]:
    """Committed state files of every day before ``date`` (the full check reads them all)."""
    root = paths.embed_state_root(workdir, model_version)
    days = partitions.committed_days(root, _listed_days(workdir, model_version, date))
    return [u for c in days.values() for u in c.files]


def latest_snapshot(workdir: str, model_version: str, date: dt.date) -> Snapshot | None:
    """The newest committed state before ``date``, if it is a snapshot (has a ``basis``)."""
    root = paths.embed_state_root(workdir, model_version)
    listed = _listed_days(workdir, model_version, date)
    for day in sorted(listed, reverse=True):
        folder = storage.join(root, f"dt={day.isoformat()}")
        manifest = partitions.read_manifest(folder, listed[day])
        if manifest is None:
            continue  # not committed (a crashed run): an older day may be
        basis = manifest.get("basis")
        if not isinstance(basis, dict):
            return None
        files = partitions.manifest_files(folder, manifest)  # not a second read of it
        return Snapshot(day, files, {str(k): str(v) for k, v in basis.items()})
    return None
