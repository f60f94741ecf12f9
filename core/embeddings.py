"""The Embedding Parquet contract of docs/DESIGN.md: schema, writer helpers, readers.

Layout: ``WORKDIR/embeddings/model=VERSION/dt=D/part-NNNNN-of-NNNNN.parquet``. A day's partition
holds only images whose (listing_id, image_index, image_sha256) had no row yet for that model
version (``--full`` re-embeds everything into that day's partition). So:

* ``existing_keys`` streams the keys already embedded (what the embed job skips);
* ``read_current_embeddings`` gives the embeddings of the images in a day's snapshot: the
  snapshot's (listing_id, image_index) joined with every partition dt <= D, one row per image
  (the newest row with today's image URI, else the newest row). It streams in batches and holds
  only the snapshot's keys in memory (~150 bytes per image), never the embeddings.

Known limit: the reader cannot know today's sha256 without reading the image, so when today's
photo of a slot was dead-lettered and its URI is new, the slot keeps its previous embedding until
a later run embeds the new photo (the dead letter names it).
"""

from __future__ import annotations

import datetime as dt
import errno
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import partitions, paths, storage

KEY_COLUMNS = ("listing_id", "image_index", "image_sha256")


def schema(dim: int) -> pa.Schema:
    """The explicit Arrow schema of an embedding file for a model with ``dim`` dimensions."""
    if dim <= 0:
        raise ValueError(f"embedding dim must be positive, got {dim}")
    return pa.schema(
        [
            pa.field("listing_id", pa.string(), nullable=False),
            pa.field("image_uri", pa.string(), nullable=False),
            pa.field("image_index", pa.int16(), nullable=False),
            pa.field("image_sha256", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.field("item", pa.float32()), dim), nullable=False),
            pa.field("category_pred", pa.string()),
            pa.field("category_score", pa.float32()),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    )


PARTITION_FIELD = pa.field("dt", pa.date32(), nullable=False)  # the hive key: in paths, not files


def current_schema(dim: int) -> pa.Schema:
    """What the readers return: the file schema plus ``dt`` taken from the partition path."""
    return schema(dim).append(PARTITION_FIELD)


def embedding_dim(s: pa.Schema) -> int:
    t = s.field("embedding").type
    if not pa.types.is_fixed_size_list(t) or t.value_type != pa.float32():
        raise ValueError(f"embedding column must be fixed_size_list<float32>, got {t}")
    return int(t.list_size)


def to_record_batch(rows: Sequence[Mapping[str, Any]], dim: int) -> pa.RecordBatch:
    """Rows (dicts with the schema's column names; ``embedding`` a float array of ``dim``) -> batch.

    Raises ValueError when an embedding has the wrong length, so a model/config mismatch is a clear
    error instead of a file that downstream readers cannot use.
    """
    n = len(rows)
    vectors = np.zeros((n, dim), dtype=np.float32)
    for i, r in enumerate(rows):
        v = np.asarray(r["embedding"], dtype=np.float32).reshape(-1)
        if v.shape[0] != dim:
            raise ValueError(
                f"embedding of {r.get('listing_id')}#{r.get('image_index')} has {v.shape[0]} "
                f"dims, the model config says {dim}"
            )
        vectors[i] = v
    names = [f.name for f in schema(dim) if f.name != "embedding"]
    return from_columns(vectors, {name: [r[name] for r in rows] for name in names})


def from_columns(vectors: np.ndarray, columns: Mapping[str, Any]) -> pa.RecordBatch:
    """A batch of the file schema from ``vectors`` [N, D] and every other column's N values
    (lists or Arrow arrays), in the schema's types; the embed job builds its rows this way, a
    batch of photos at a time."""
    n, dim = vectors.shape
    s = schema(dim)
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), type=pa.float32())
    arrays = [
        pa.FixedSizeListArray.from_arrays(flat, dim)
        if f.name == "embedding"
        else pa.array(columns[f.name], type=f.type)
        for f in s
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=s)


def write_parquet(uri: str, batches: Iterable[pa.RecordBatch], dim: int) -> int:
    """Write batches as one Parquet file that appears under ``uri`` only when complete.

    Returns the number of rows. An empty input still writes a valid file with the schema.
    """
    n = 0
    try:
        with (
            storage.atomic_writer(uri) as f,
            pq.ParquetWriter(f, schema(dim), compression="zstd") as w,
        ):
            for b in batches:
                w.write_batch(b)
                n += b.num_rows
    except OSError as e:
        if e.errno == errno.ENOSPC or "No space left" in str(e):
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {uri}") from e
        raise
    return n


# ------------------------------------------------------------------ listing partitions


def committed_partitions(workdir: str, model_version: str) -> dict[dt.date, partitions.Committed]:
    """Every partition of a model version that has committed files, by date (sorted): the
    files its ``_manifest.json`` names and its commit id (see core/partitions.py)."""
    root = paths.embeddings_root(workdir, model_version)
    return partitions.committed_days(root, partitions.listed_days(root))


def partition_files(workdir: str, model_version: str) -> dict[dt.date, list[str]]:
    """Every committed embedding file of a model version, by partition date (sorted)."""
    return {d: c.files for d, c in committed_partitions(workdir, model_version).items()}


def files_through(
    workdir: str, model_version: str, date: dt.date | str, *, inclusive: bool = True
) -> list[tuple[dt.date, list[str]]]:
    """Partitions with dt <= date (dt < date when not inclusive), newest first."""
    date = _as_date(date)
    parts = partition_files(workdir, model_version)
    keep = [(d, f) for d, f in parts.items() if d < date or (inclusive and d == date)]
    return sorted(keep, key=lambda p: p[0], reverse=True)


def open_parquet(uri: str) -> pq.ParquetFile:
    """A ParquetFile on any URI (a plain path locally: pyarrow's own reader is fastest there)."""
    uri = storage.normalize(uri)
    return pq.ParquetFile(uri if not storage.is_gcs(uri) else storage.open_read(uri))


def iter_key_batches(uri: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """The key columns of one file, batch by batch (the embedding column is never read)."""
    yield from open_parquet(uri).iter_batches(batch_size=batch_size, columns=list(KEY_COLUMNS))


def existing_keys(
    workdir: str,
    model_version: str,
    up_to_date: dt.date | str,
    *,
    inclusive: bool = True,
    batch_size: int = 65536,
) -> Iterator[pa.RecordBatch]:
    """Stream the keys already embedded for a model version in partitions dt <= up_to_date.

    The embed job uses ``inclusive=False``: a re-run of day D skips only what earlier days
    embedded, so it reproduces day D's partition instead of emptying it.
    """
    for _, files in files_through(workdir, model_version, up_to_date, inclusive=inclusive):
        for uri in files:
            yield from iter_key_batches(uri, batch_size)


# ------------------------------------------------------------------ current view for a day


ImageKey = tuple[str, int]  # (listing_id, image_index)


def snapshot_images(catalog: str, date: dt.date | str) -> dict[ImageKey, str]:
    """(listing_id, image_index) -> URI of every listing photo in the day's snapshot, as rows
    name it (``catalog.catalog_name``: relative to CATALOG when under it)."""
    from core import catalog as catalog_mod
    from core import snapshot

    snap = snapshot.read_snapshot(catalog, _as_date(date))
    return {
        (ref.listing_id, int(ref.image_index)): catalog_mod.catalog_name(ref.uri, catalog)
        for listing in snap.listings
        for ref in catalog_mod.listing_images(listing)
    }


def _winners(
    wanted: Mapping[ImageKey, str | None], parts: list[tuple[dt.date, list[str]]], batch_size: int
) -> dict[ImageKey, dt.date]:
    """Pass 1 (key and URI columns only): the partition whose row is current for each image.

    The newest row whose image_uri is today's URI wins; when no row has today's URI (the same
    bytes moved to a new URI, which the embed job skips), the newest row does.
    """
    best: dict[ImageKey, dt.date] = {}
    exact: set[ImageKey] = set()
    for day, files in parts:  # newest first
        for uri in files:
            pf = open_parquet(uri)
            _check_schema(uri, pf.schema_arrow)
            for b in pf.iter_batches(
                batch_size=batch_size, columns=["listing_id", "image_index", "image_uri"]
            ):
                for lid, idx, u in zip(*(c.to_pylist() for c in b.columns), strict=True):
                    k = (lid, idx)
                    if k not in wanted or k in exact:
                        continue
                    if u == wanted[k]:
                        best[k] = day
                        exact.add(k)
                    elif k not in best:
                        best[k] = day
    return best


def read_current_embeddings(
    catalog: str,
    workdir: str,
    date: dt.date | str,
    model_version: str,
    batch_size: int = 65536,
    *,
    image_keys: Mapping[ImageKey, str | None] | Collection[ImageKey] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream the current embeddings for ``date``: one row per snapshot image that has one.

    Images of listings missing from the day's snapshot (removed) and image slots a listing no
    longer has are left out; a changed photo's new row wins over its old one, and a photo changed
    back (A -> B -> A, content-addressed URIs) gets A's row again. ``image_keys`` ((listing_id,
    image_index) -> URI; a plain set of keys means "newest row") replaces the snapshot read. Batches have at
    most ``batch_size`` rows and the contract schema plus ``dt`` (the partition the row comes
    from), as every hive reader returns it.

    Two passes, no sort: pass 1 reads only the key and URI columns and picks the partition of
    each image's current row; pass 2 reads the partitions that hold a current row and keeps those
    rows. A day's partition holds at most one row per image, so (image, day) names one row.
    Memory: the snapshot's keys and one date per key, never the embeddings.
    """
    wanted: Mapping[ImageKey, str | None]
    if image_keys is None:
        wanted = snapshot_images(catalog, date)
    elif isinstance(image_keys, Mapping):
        wanted = image_keys
    else:
        wanted = dict.fromkeys(image_keys)
    parts = files_through(workdir, model_version, date, inclusive=True)
    best = _winners(wanted, parts, batch_size)
    needed = set(best.values())
    for day, files in parts:
        if day not in needed:
            continue  # every row of this day was superseded: its embeddings are never read
        for uri in files:
            for b in open_parquet(uri).iter_batches(batch_size=batch_size):
                b = _without_legacy_dt(b)
                keys = zip(
                    b.column("listing_id").to_pylist(),
                    b.column("image_index").to_pylist(),
                    strict=True,
                )
                mask = [best.get(k) == day for k in keys]
                if any(mask):
                    kept = b.filter(pa.array(mask, type=pa.bool_()))
                    day_column = pa.array([day] * kept.num_rows, type=pa.date32())
                    yield pa.RecordBatch.from_arrays(
                        [*kept.columns, day_column], schema=current_schema(embedding_dim(b.schema))
                    )


def read_current_table(
    catalog: str, workdir: str, date: dt.date | str, model_version: str, dim: int | None = None
) -> pa.Table:
    """The current embeddings as one Table, sorted by (listing_id, image_index): small data only."""
    batches = list(read_current_embeddings(catalog, workdir, date, model_version))
    # An empty result still has the contract's columns (``dim`` only matters for its type).
    table = pa.Table.from_batches(batches) if batches else current_schema(dim or 1).empty_table()
    return table.sort_by([("listing_id", "ascending"), ("image_index", "ascending")])


def _without_legacy_dt(b: pa.RecordBatch) -> pa.RecordBatch:
    """Files written before the hive key left the files still carry ``dt``: drop it on read."""
    if "dt" not in b.schema.names:
        return b
    return b.drop_columns(["dt"])


def _check_schema(uri: str, s: pa.Schema) -> None:
    if "dt" in s.names:
        s = s.remove(s.get_field_index("dt"))
    expected = schema(embedding_dim(s))
    if not s.equals(expected):
        raise ValueError(f"{uri} does not have the embedding schema:\n{s}\nexpected:\n{expected}")


def _as_date(date: dt.date | str) -> dt.date:
    return date if isinstance(date, dt.date) else paths.parse_date(date)
