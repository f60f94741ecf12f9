"""The listings rules of ``catalog.py`` checked on whole Arrow columns, for the common row.

A marketplace's daily listings table has 100M rows. Parsing each into a ``Listing`` object cost
the daily embed more than everything else an unchanged photo costs (0.19 ms of it at 112k
photos). ``split_listings`` checks a whole record batch at once with *conservative* column rules:
a row that passes them is one that ``catalog.parse_listing`` accepts, and its resolved URIs are
the ones ``parse_listing`` would return. Every other row (an odd URI, ``file://``, a
non-ASCII-only id, a misaligned checksum list, a batch with invalid UTF-8...) goes back to be
parsed alone by ``parse_listing``, which gives it its exact outcome and dead-letter reason. So the
column rules can only be too strict (a slower row), never too lenient (a wrong row); the tests
check that every row they accept, ``parse_listing`` accepts identically.

``LISTING_TABLE`` is what comes out: only what the embed needs (id, resolved URIs, checksums).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import storage
from core.catalog import MAX_IMAGES, Listing, bucket_names

LISTING_TABLE = pa.schema(
    [
        ("listing_id", pa.string()),
        ("image_uris", pa.list_(pa.string())),  # resolved full URIs, first = primary
        ("image_checksums", pa.list_(pa.string())),  # null: none given for the listing
    ]
)

# A path segment that is never "", "." or "..", with no scheme, backslash or control character.
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_PATH = f"{_SEGMENT}(?:/{_SEGMENT})*"
_RELATIVE = f"^{_PATH}$"
_LOCAL_ABSOLUTE = f"^/{_PATH}$"
_GCS = f"^gs://[a-z0-9][a-z0-9._\\-]*/{_PATH}$"
# A printable ASCII character that is not a space: an id holding one is never blank.
_ID = r"[!-~]"
# 2+ taxonomy levels, each holding a printable non-space ASCII character other than "/".
_CATEGORY = r"^[^/]*[!-.0-~][^/]*(?:/[^/]*[!-.0-~][^/]*)+$"


class _Unusual(Exception):
    """A column type the column rules do not handle: the whole batch goes to the row parser."""


def _plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array: dictionary strings decoded, large types narrowed; else _Unusual."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = array.type
    if pa.types.is_dictionary(t):
        array, t = array.cast(t.value_type), t.value_type
    if pa.types.is_large_string(t):
        return array.cast(pa.string())
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        value = t.value_type.value_type if pa.types.is_dictionary(t.value_type) else t.value_type
        if not (pa.types.is_string(value) or pa.types.is_large_string(value)):
            raise _Unusual(str(t))
        return array.cast(pa.list_(pa.string()))
    if pa.types.is_string(t) or pa.types.is_null(t) or pa.types.is_timestamp(t):
        return array
    raise _Unusual(str(t))


def _mask(expr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(expr, False).to_numpy(zero_copy_only=False), dtype=bool)


def split_listings(
    batch: pa.Table, catalog: str, allowed_buckets: Iterable[str] = ()
) -> tuple[pa.Table, pa.Table]:
    """A batch of raw listings rows -> (the rows the column rules accept, as ``LISTING_TABLE``
    with resolved URIs; every other row, as read, for ``parse_listing``)."""
    n = batch.num_rows
    try:
        batch.validate(full=True)  # invalid UTF-8 anywhere: the row parser names the row
        cols = {name: _plain(batch.column(name)) for name in batch.column_names}
    except (pa.ArrowInvalid, _Unusual):
        return LISTING_TABLE.empty_table(), batch
    ok = np.ones(n, dtype=bool)
    lid = cols["listing_id"]
    ok &= _mask(pc.match_substring_regex(lid, _ID)) if not pa.types.is_null(lid.type) else False
    category = cols["category"]
    if pa.types.is_null(category.type):
        ok[:] = False
    else:
        ok &= _mask(pc.match_substring_regex(category, _CATEGORY))

    uris = cols["image_uris"]
    checksums = cols.get("image_checksums")
    if not pa.types.is_list(uris.type) or (
        checksums is not None
        and not (pa.types.is_list(checksums.type) or pa.types.is_null(checksums.type))
    ):
        return LISTING_TABLE.empty_table(), batch
    lengths = pc.list_value_length(uris)
    ok &= _mask(pc.and_(pc.greater_equal(lengths, 1), pc.less_equal(lengths, MAX_IMAGES)))
    flat = pc.list_flatten(uris)  # null lists contribute nothing
    parents = pc.list_parent_indices(uris).to_numpy()
    root = storage.normalize(catalog)
    relative = _mask(pc.match_substring_regex(flat, _RELATIVE))
    ok[parents[~(relative | _absolute_ok(flat, root, allowed_buckets))]] = False

    if checksums is not None and not pa.types.is_null(checksums.type):
        aligned = pc.or_kleene(
            pc.is_null(checksums), pc.equal(pc.list_value_length(checksums), lengths)
        )
        ok &= _mask(aligned)
    updated = cols.get("updated_at")
    if updated is not None and pa.types.is_string(updated.type):
        ok &= _iso_or_empty(updated)

    # Resolve every URI once (a relative one goes under the root), then keep the accepted rows.
    prefix = root if root.endswith("/") else root + "/"
    resolved_flat = pc.if_else(
        pa.array(relative), pc.binary_join_element_wise(prefix, flat, ""), flat
    )
    offsets = np.concatenate([[0], np.cumsum(pc.fill_null(lengths, 0).to_numpy())])
    rows = pa.array(np.flatnonzero(ok))
    resolved = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), resolved_flat).take(rows)
    if checksums is None or pa.types.is_null(checksums.type):
        kept_checksums = pa.nulls(len(rows), pa.list_(pa.string()))
    else:
        kept_checksums = checksums.take(rows)
    fast = pa.Table.from_arrays([lid.take(rows), resolved, kept_checksums], schema=LISTING_TABLE)
    return fast, batch.filter(pa.array(~ok))


def _absolute_ok(flat: pa.Array, root: str, allowed_buckets: Iterable[str]) -> np.ndarray:
    """Full URIs that ``resolve_image_uri`` returns unchanged: a clean gs:// URI in an allowed
    bucket or under a gs:// root; a clean absolute path under a local root."""
    gcs_roots = [f"gs://{b}/" for b in sorted(bucket_names(allowed_buckets))]
    if storage.is_gcs(root):
        gcs_roots.append(root.rstrip("/") + "/")
    gcs = np.zeros(len(flat), dtype=bool)
    for p in gcs_roots:
        gcs |= _mask(pc.starts_with(flat, p))
    ok = gcs & _mask(pc.match_substring_regex(flat, _GCS))
    if not storage.is_gcs(root):
        under = _mask(pc.starts_with(flat, root.rstrip("/") + "/"))
        ok |= under & _mask(pc.match_substring_regex(flat, _LOCAL_ABSOLUTE))
    return ok


def _iso_or_empty(values: pa.Array) -> np.ndarray:
    """updated_at given as strings: null, "" or an ISO timestamp ``fromisoformat`` reads."""
    out = np.ones(len(values), dtype=bool)
    for i, v in enumerate(values.to_pylist()):
        if v:
            try:
                dt.datetime.fromisoformat(v)
            except ValueError:
                out[i] = False
    return out


def listing_table(listings: Sequence[Listing]) -> pa.Table:
    """Parsed listings (the row parser's output) -> ``LISTING_TABLE``."""
    return pa.Table.from_arrays(
        [
            pa.array([x.listing_id for x in listings], pa.string()),
            pa.array([list(x.image_uris) for x in listings], pa.list_(pa.string())),
            pa.array(
                [list(x.image_checksums) if x.image_checksums else None for x in listings],
                pa.list_(pa.string()),
            ),
        ],
        schema=LISTING_TABLE,
    )
