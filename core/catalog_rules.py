"""The catalog rules table: each column of listings and reviews defined once, for every path.

One :class:`Field` per column says its name, the Parquet type it must have, whether it is
required, its check of one row's value (with the dead-letter reason when the value breaks it)
and, for listings, the same check on a whole Arrow column. Three appliers read this table and
nothing else, so a rule cannot differ between them:

* :func:`check_required` / :func:`check_types`: a Parquet file's schema, before any row is read
  (a clear ``CatalogError``; ``core.snapshot.check_table``);
* :func:`parse_listing` / :func:`parse_review`: one row (a Parquet row or a JSONL object) ->
  :class:`~core.catalog.Listing` / :class:`~core.catalog.Review`, or ``InvalidRow``;
* ``core.catalog_columns.split_listings``: a record batch of listings, a whole column at a time.

A column check is *conservative*: it marks the rows its field's row check surely accepts, and
returns their values as the row check would (resolved URIs, "" checksums as null). A row it does
not mark goes to the row check, which gives it its exact outcome and reason: the column form can
be stricter than the row form (a slower row), never more lenient (a wrong row). The outcome of
each violation, and why, is the table in ``core.catalog``'s docstring.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import storage
from core.catalog import (
    MAX_IMAGES,
    CatalogError,
    InvalidRow,
    Listing,
    Review,
    bucket_names,
    excerpt,
    resolve_image_uri,
)


@dataclass(frozen=True)
class RowContext:
    catalog: str
    allowed_buckets: Iterable[str]
    listing_id: str | None  # the row's listing, named in its dead letter
    parsed: Mapping[str, Any]  # the values of the fields checked before this one


@dataclass(frozen=True)
class ColumnContext:
    root: str  # the normalised catalog root
    allowed_buckets: Iterable[str]
    columns: Mapping[str, pa.Array]  # the whole batch (a field may depend on another)


class UnusualColumn(Exception):
    """A column type the column checks do not handle: the whole batch goes to the row checks."""


RowCheck = Callable[[str, Any, RowContext], Any]
ColumnCheck = Callable[[pa.Array, ColumnContext], tuple[np.ndarray, pa.Array]]


@dataclass(frozen=True)
class Field:
    name: str
    # The type a Parquet column must have, as the clear error names it (a wrong type would fail
    # every row the same way); None: checked row by row only. An optional column may also be
    # all-null (type null): every value is simply missing.
    arrow: str | None
    required: bool  # a Parquet file without the column is a clear error
    check: RowCheck  # one row's value -> its parsed value; InvalidRow(reason) if it breaks the rule
    column: ColumnCheck | None = None  # the same rule on a column (listings only), conservative


# ------------------------------------------------------------------------ row checks


def _required_id(name: str, value: Any, ctx: RowContext) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidRow(f"missing {name}", ctx.listing_id)
    if not isinstance(value, str):
        raise InvalidRow(f"{name} must be a string, got {type(value).__name__}", ctx.listing_id)
    return value


def _image_uris(name: str, value: Any, ctx: RowContext) -> tuple[str, ...]:
    if value is None:
        raise InvalidRow(f"missing {name}", ctx.listing_id)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidRow(f"{name} must be a list, got {type(value).__name__}", ctx.listing_id)
    if not value:
        raise InvalidRow(f"empty {name}", ctx.listing_id)
    if len(value) > MAX_IMAGES:
        raise InvalidRow(f"too many images: {len(value)} > {MAX_IMAGES}", ctx.listing_id)
    return tuple(_image_uri(name, uri, ctx) for uri in value)


def _image_uri(name: str, value: Any, ctx: RowContext) -> str:
    try:
        return resolve_image_uri(value, ctx.catalog, ctx.allowed_buckets)
    except InvalidRow as e:
        raise InvalidRow(e.reason, ctx.listing_id, e.uri) from None


def _category(name: str, value: Any, ctx: RowContext) -> str:
    if value is None or value == "":
        raise InvalidRow(f"missing {name}", ctx.listing_id)
    levels = value.split("/") if isinstance(value, str) else []
    if len(levels) < 2 or any(not level.strip() for level in levels):
        raise InvalidRow(
            f"{name} {excerpt(str(value))} is not a taxonomy path "
            "(2 or more non-empty levels, e.g. home/kitchen/mug)",
            ctx.listing_id,
        )
    return str(value)


def _optional_string(name: str, value: Any, ctx: RowContext) -> str | None:
    if value is None or value == "":  # an empty attribute is a missing one
        return None
    if not isinstance(value, str):
        raise InvalidRow(f"{name} must be a string, got {type(value).__name__}", ctx.listing_id)
    return value


def _timestamp(name: str, value: Any, ctx: RowContext) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidRow(f"{name} is not an ISO timestamp: {str(value)[:40]!r}", ctx.listing_id)


def _checksums(name: str, value: Any, ctx: RowContext) -> tuple[str | None, ...]:
    if value is None:
        return ()
    n = len(ctx.parsed["image_uris"])
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != n:
        raise InvalidRow(f"{name} must be a list aligned with image_uris", ctx.listing_id)
    if any(c is not None and not isinstance(c, str) for c in value):
        raise InvalidRow(f"{name} must hold strings or nulls", ctx.listing_id)
    return tuple(c or None for c in value)  # "" is "not given", as a null


def check_utf8(row: Mapping[str, Any]) -> None:
    """A lone surrogate (JSON ``"\\ud800"``) is a str no later step can encode as UTF-8 (Beam's
    coders, Parquet, TFRecords): reject the row, named with the surrogate escaped. The one rule
    on every column of a row, known or not; its column form is ``pa.Table.validate(full=True)``."""
    lid = row.get("listing_id")
    named = (
        lid.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(lid, str) else None
    )
    for key, value in row.items():
        for v in value if isinstance(value, list | tuple) else (value,):
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidRow(f"{key} is not valid UTF-8 (lone surrogate)", named) from None


# ------------------------------------------------------------------------ column checks

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


def mask(expr: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, null as False."""
    return np.asarray(pc.fill_null(expr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _matching(pattern: str) -> ColumnCheck:
    def check(column: pa.Array, ctx: ColumnContext) -> tuple[np.ndarray, pa.Array]:
        if pa.types.is_null(column.type):  # all missing
            return np.zeros(len(column), dtype=bool), column
        return mask(pc.match_substring_regex(column, pattern)), column

    return check


def _any_string(column: pa.Array, ctx: ColumnContext) -> tuple[np.ndarray, pa.Array]:
    """An Arrow string (or all-null) column holds only strings and nulls: every row passes."""
    return np.ones(len(column), dtype=bool), column


def _image_uris_column(column: pa.Array, ctx: ColumnContext) -> tuple[np.ndarray, pa.Array]:
    if not pa.types.is_list(column.type):
        raise UnusualColumn(str(column.type))
    lengths = pc.list_value_length(column)
    ok = mask(pc.and_(pc.greater_equal(lengths, 1), pc.less_equal(lengths, MAX_IMAGES)))
    flat = pc.list_flatten(column)  # null lists contribute nothing
    parents = pc.list_parent_indices(column).to_numpy()
    relative = mask(pc.match_substring_regex(flat, _RELATIVE))
    ok[parents[~(relative | _absolute_ok(flat, ctx.root, ctx.allowed_buckets))]] = False
    # Resolved as resolve_image_uri resolves them: a relative URI goes under the root.
    prefix = ctx.root if ctx.root.endswith("/") else ctx.root + "/"
    resolved = pc.if_else(pa.array(relative), pc.binary_join_element_wise(prefix, flat, ""), flat)
    return ok, pa.ListArray.from_arrays(_offsets(lengths), resolved)


def _absolute_ok(flat: pa.Array, root: str, allowed_buckets: Iterable[str]) -> np.ndarray:
    """Full URIs that ``resolve_image_uri`` returns unchanged: a clean gs:// URI in an allowed
    bucket or under a gs:// root; a clean absolute path under a local root."""
    gcs_roots = [f"gs://{b}/" for b in sorted(bucket_names(allowed_buckets))]
    if storage.is_gcs(root):
        gcs_roots.append(root.rstrip("/") + "/")
    gcs = np.zeros(len(flat), dtype=bool)
    for p in gcs_roots:
        gcs |= mask(pc.starts_with(flat, p))
    ok = gcs & mask(pc.match_substring_regex(flat, _GCS))
    if not storage.is_gcs(root):
        under = mask(pc.starts_with(flat, root.rstrip("/") + "/"))
        ok |= under & mask(pc.match_substring_regex(flat, _LOCAL_ABSOLUTE))
    return ok


def _timestamp_column(column: pa.Array, ctx: ColumnContext) -> tuple[np.ndarray, pa.Array]:
    """Timestamps and nulls pass; strings pass when null, "" or what ``fromisoformat`` reads."""
    ok = np.ones(len(column), dtype=bool)
    if pa.types.is_string(column.type):
        for i, v in enumerate(column.to_pylist()):
            if v:
                try:
                    dt.datetime.fromisoformat(v)
                except ValueError:
                    ok[i] = False
    return ok, column


def _checksums_column(column: pa.Array, ctx: ColumnContext) -> tuple[np.ndarray, pa.Array]:
    if pa.types.is_null(column.type):
        return np.ones(len(column), dtype=bool), pa.nulls(len(column), pa.list_(pa.string()))
    if not pa.types.is_list(column.type):
        raise UnusualColumn(str(column.type))
    lengths = pc.list_value_length(ctx.columns["image_uris"])
    aligned = pc.or_kleene(pc.is_null(column), pc.equal(pc.list_value_length(column), lengths))
    flat = pc.list_flatten(column)
    given = pc.if_else(pc.equal(flat, ""), pa.scalar(None, pa.string()), flat)
    parsed = pa.ListArray.from_arrays(
        _offsets(pc.list_value_length(column)), given, mask=pc.is_null(column)
    )
    return mask(aligned), parsed


def _offsets(lengths: pa.Array) -> pa.Array:
    """List lengths (null: a null list) -> the offsets of the same lists over their flat values."""
    counts = pc.fill_null(lengths, 0).to_numpy()
    return pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())


# ------------------------------------------------------------------------ the table

_STRING = "string"
LISTING_FIELDS = (  # in the order the rules apply: a row's dead letter names its first failure
    Field("listing_id", _STRING, True, _required_id, _matching(_ID)),
    Field("image_uris", "list<string>", True, _image_uris, _image_uris_column),
    Field("category", _STRING, True, _category, _matching(_CATEGORY)),
    Field("title", _STRING, False, _optional_string, _any_string),
    Field("color", _STRING, False, _optional_string, _any_string),
    Field("shape", _STRING, False, _optional_string, _any_string),
    Field("material", _STRING, False, _optional_string, _any_string),
    Field("updated_at", "timestamp (or an ISO 8601 string)", False, _timestamp, _timestamp_column),
    # Not typed up front: a wrong checksum list rejects its row only (the contract's table).
    Field("image_checksums", None, False, _checksums, _checksums_column),
)
REVIEW_FIELDS = (
    Field("review_id", _STRING, True, _required_id),
    Field("listing_id", _STRING, True, _required_id),
    Field("image_uri", _STRING, True, _image_uri),
)
FIELDS = {"listings": LISTING_FIELDS, "reviews": REVIEW_FIELDS}


# ------------------------------------------------------------------------ schema


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):  # dictionary-encoded strings read back as strings
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


_TYPES: dict[str, Callable[[pa.DataType], bool]] = {
    _STRING: _is_string,
    "list<string>": lambda t: (
        (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_string(t.value_type)
    ),
    "timestamp (or an ISO 8601 string)": lambda t: pa.types.is_timestamp(t) or _is_string(t),
}


def check_required(names: Sequence[str], table: str, uri: str) -> None:
    """CatalogError when a Parquet file lacks a required column of its table."""
    missing = [f.name for f in FIELDS[table] if f.required and f.name not in names]
    if missing:
        raise CatalogError(f"{uri} lacks required column(s) {missing}; has {list(names)}")


def check_types(schema: pa.Schema, table: str, uri: str) -> list[str]:
    """CatalogError naming the first column of a wrong type; else the table's columns to read
    (extra columns are ignored)."""
    for f in FIELDS[table]:
        if f.arrow is None or f.name not in schema.names:
            continue
        t = schema.field(f.name).type
        if not (_TYPES[f.arrow](t) or (not f.required and pa.types.is_null(t))):
            raise CatalogError(f"{uri}: column {f.name} must be {f.arrow}, is {t}")
    return [f.name for f in FIELDS[table] if f.name in schema.names]


# ------------------------------------------------------------------------ rows


def _parse(
    row: Mapping[str, Any], fields: Sequence[Field], catalog: str, allowed: Iterable[str]
) -> dict[str, Any]:
    check_utf8(row)
    raw = row.get("listing_id")
    named = raw if isinstance(raw, str) and raw else None
    parsed: dict[str, Any] = {}
    for f in fields:
        # A failed listing_id names no listing; every other failure names the row's listing.
        ctx = RowContext(catalog, allowed, None if f.name == "listing_id" else named, parsed)
        parsed[f.name] = f.check(f.name, row.get(f.name), ctx)
    return parsed


def parse_listing(
    row: Mapping[str, Any], catalog: str, allowed_buckets: Iterable[str] = ()
) -> Listing:
    """Validate one listings row (``LISTING_FIELDS``); raises InvalidRow."""
    return Listing(**_parse(row, LISTING_FIELDS, catalog, allowed_buckets))


def parse_review(
    row: Mapping[str, Any], catalog: str, allowed_buckets: Iterable[str] = ()
) -> Review:
    """Validate one reviews row (``REVIEW_FIELDS``); raises InvalidRow."""
    return Review(**_parse(row, REVIEW_FIELDS, catalog, allowed_buckets))
