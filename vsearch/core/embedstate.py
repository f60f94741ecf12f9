"""The embed job's state: which object metadata key had which sha256 (per model version).

``WORKDIR/embed_state/model=VERSION/dt=D/part-*.parquet`` with (listing_id, image_index,
image_uri, meta_key, image_sha256): one row per photo whose bytes a run of day D read. It lives
beside, not inside, the Embedding Parquet folder, so no downstream reader ever sees it, and it is
only a cache: a photo is skipped on its metadata alone when the state names its (slot, URI, key)
*and* an embedding row with that slot and sha256 exists in an earlier partition. Losing the
state costs one day of reading every photo again, never a wrong or missing embedding.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vsearch.core import partitions, paths, storage

SCHEMA = pa.schema(
    [
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("image_index", pa.int16(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("meta_key", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
    ]
)
_DT_RE = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def write(uri: str, rows: Sequence[Mapping[str, Any]]) -> int:
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=SCHEMA)
    with storage.atomic_writer(uri) as f:
        pq.write_table(table, f, compression="zstd")
    return table.num_rows


def files_before(workdir: str, model_version: str, date: dt.date) -> list[str]:
    """Committed state files of days before ``date``."""
    root = paths.embed_state_root(workdir, model_version)
    by_day: dict[str, list[str]] = {}
    for uri in storage.list_prefix(root):
        m = _DT_RE.search(uri.replace("\\", "/"))
        if m and dt.date.fromisoformat(m.group(1)) < date:
            by_day.setdefault(m.group(1), []).append(uri)
    out: list[str] = []
    for day, listed in sorted(by_day.items()):
        out += partitions.committed_files(storage.join(root, f"dt={day}"), listed)
    return out
