"""Rewrite embedding partitions written before ``dt`` left the files (a contract change, docs/changelog.md).

Earlier versions wrote ``dt`` as a column inside every file and no ``dt=D/_manifest.json``.
The package's readers drop the column, but pandas, ``pyarrow.dataset`` and DuckDB refuse a folder
whose hive key is also a file column, and BigQuery external tables forbid the overlap. This
rewrites each such partition without the column and commits it like any other partition (a staged
copy, then ``partitions.publish``): a reader sees the old files or the new ones, never a mix, and
a kill at any point leaves one of them in place. Rows, their order and every other column are
kept. Idempotent: a committed partition whose files have no ``dt`` column is left alone.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass

from core import embeddings, partitions, paths, storage

_MODEL_RE = re.compile(r"/embeddings/model=([^/]+)/dt=(\d{4}-\d{2}-\d{2})/[^/]+$")


@dataclass(frozen=True)
class PartitionUpgrade:
    partition: str
    files: int
    rows: int
    state: str  # "current" (left alone), "legacy" (a dry run found it old) or "rewritten"


def embedding_partitions(workdir: str) -> list[tuple[str, dt.date]]:
    """(model version, date) of every embeddings partition under WORKDIR, sorted."""
    found = set()
    for uri in storage.list_prefix(storage.join(workdir, "embeddings")):
        m = _MODEL_RE.search(storage.normalize(uri).replace("\\", "/"))
        if m:
            found.add((m.group(1), dt.date.fromisoformat(m.group(2))))
    return sorted(found)


def _files(partition: str) -> list[str]:
    listed = [u for u in storage.list_prefix(partition) if u.endswith(".parquet")]
    return sorted(partitions.committed_files(partition, listed))


def needs_upgrade(partition: str) -> bool:
    """A partition without a manifest, or with a file that still carries ``dt``."""
    if partitions.read_manifest(partition) is None:
        return True
    return any("dt" in embeddings.open_parquet(u).schema_arrow.names for u in _files(partition))


def upgrade_partition(
    workdir: str, model_version: str, date: dt.date, *, dry_run: bool = False
) -> PartitionUpgrade:
    """Rewrite one partition in the current layout (see the module docstring)."""
    partition = paths.embeddings_dir(workdir, model_version, date)
    files = _files(partition)
    legacy = needs_upgrade(partition)
    if not legacy or dry_run:
        rows = sum(embeddings.open_parquet(u).metadata.num_rows for u in files)
        return PartitionUpgrade(partition, len(files), rows, "legacy" if legacy else "current")
    attempt = uuid.uuid4().hex[:12]
    staged = paths.staging_dir(workdir, "upgrade", date, attempt)
    written: list[tuple[str, int]] = []
    for i, uri in enumerate(files):
        pf = embeddings.open_parquet(uri)
        schema = pf.schema_arrow
        names = [n for n in schema.names if n != "dt"]
        dim = embeddings.embedding_dim(schema)
        out = storage.join(staged, f"part-{i:05d}-of-{len(files):05d}.parquet")
        batches = (b.select(names) for b in pf.iter_batches(batch_size=65536, columns=names))
        written.append((out, embeddings.write_parquet(out, batches, dim)))
    partitions.publish(staged, partition, attempt, written)
    storage.delete_prefix(staged)
    return PartitionUpgrade(partition, len(written), sum(r for _, r in written), "rewritten")
