"""The listings rules of ``core.catalog_rules`` applied to whole Arrow columns, for the common row.

A marketplace's daily listings table has 100M rows. Parsing each into a ``Listing`` object cost
the daily embed more than everything else an unchanged photo costs (0.19 ms of it at 112k
photos). ``split_listings`` checks a whole record batch at once with each field's *column* check
from the rules table (``catalog_rules.LISTING_FIELDS``): a row that passes them all is one that
``catalog_rules.parse_listing`` accepts, with the values it would return. Every other row (an odd
URI, ``file://``, a non-ASCII-only id, a misaligned checksum list, a batch with invalid
UTF-8...) goes back to be parsed alone by ``parse_listing``, which gives it its exact outcome and
dead-letter reason. The tests check that every row the column checks accept, ``parse_listing``
accepts identically.

``LISTING_TABLE`` is what comes out: only what the embed needs (id, resolved URIs, checksums).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from core import storage
from core.catalog import Listing
from core.catalog_rules import LISTING_FIELDS, ColumnContext, UnusualColumn

LISTING_TABLE = pa.schema(
    [
        ("listing_id", pa.string()),
        ("image_uris", pa.list_(pa.string())),  # resolved full URIs, first = primary
        ("image_checksums", pa.list_(pa.string())),  # null: none given for the listing
    ]
)


def _plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array: dictionary strings decoded, large types narrowed; else
    UnusualColumn."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = array.type
    if pa.types.is_dictionary(t):
        array, t = array.cast(t.value_type), t.value_type
    if pa.types.is_large_string(t):
        return array.cast(pa.string())
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        value = t.value_type.value_type if pa.types.is_dictionary(t.value_type) else t.value_type
        if not (pa.types.is_string(value) or pa.types.is_large_string(value)):
            raise UnusualColumn(str(t))
        return array.cast(pa.list_(pa.string()))
    if pa.types.is_string(t) or pa.types.is_null(t) or pa.types.is_timestamp(t):
        return array
    raise UnusualColumn(str(t))


def split_listings(
    batch: pa.Table, catalog: str, allowed_buckets: Iterable[str] = ()
) -> tuple[pa.Table, pa.Table]:
    """A batch of raw listings rows -> (the rows every column check accepts, as
    ``LISTING_TABLE`` with their parsed values; every other row, as read, for ``parse_listing``)."""
    try:
        batch.validate(full=True)  # invalid UTF-8 anywhere: the row parser names the row
        columns = {name: _plain(batch.column(name)) for name in batch.column_names}
        ctx = ColumnContext(storage.normalize(catalog), allowed_buckets, columns)
        ok = np.ones(batch.num_rows, dtype=bool)
        parsed: dict[str, pa.Array] = {}
        for field in LISTING_FIELDS:
            if field.name not in columns:  # an optional column the file does not have
                ok &= not field.required  # (a file without a required one is refused earlier)
                continue
            assert field.column is not None, field.name  # every listings field has one
            accepted, parsed[field.name] = field.column(columns[field.name], ctx)
            ok &= accepted
    except (pa.ArrowInvalid, UnusualColumn):
        return LISTING_TABLE.empty_table(), batch
    rows = pa.array(np.flatnonzero(ok))
    kept = [
        parsed[name].take(rows)
        if name in parsed
        else pa.nulls(len(rows), LISTING_TABLE.field(name).type)
        for name in LISTING_TABLE.names
    ]
    return pa.Table.from_arrays(kept, schema=LISTING_TABLE), batch.filter(pa.array(~ok))


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
