"""The catalog snapshot contract (DESIGN.md "Catalog snapshot"): tables, URI rules, validation.

A day's snapshot is ``CATALOG/dt=D/listings.{parquet|jsonl}`` (required) and
``CATALOG/dt=D/reviews.{parquet|jsonl}`` (optional). This module holds the contract's types
(:class:`Listing`, :class:`Review`, their errors) and its URI rules; each column's rule is
defined once in ``core.catalog_rules`` (the rules table), which checks a Parquet schema, one row
(``parse_listing``, ``parse_review``) and, through ``core.catalog_columns``, a whole record batch
of listings. ``core.snapshot`` finds and checks a day's tables and reads their rows; every reader
(the Beam transforms of ``transforms/``, any size, and ``core.snapshot.read_snapshot``, driver
side, small data) goes through it.

Image URIs: a relative URI is under CATALOG (the root, not the ``dt=`` folder); a full URI
(``gs://...``, ``file://...`` or an absolute path) must lie under CATALOG or, for ``gs://``, in one of
``allowed_buckets``. Any ``..`` segment is refused outright, whatever it would resolve to, and a
refused URI is never opened. Symlinks under CATALOG are not resolved: the catalog root is
trusted, the rows in it are not.

What happens to each violation. A *clear error* (:class:`CatalogError`) stops the stage before
any work: nothing in the snapshot can be trusted or the fix is upstream. A *dead letter* rejects
that row only (``{listing_id, uri, stage, error}`` under ``WORKDIR/deadletter/``); the rest of
the day goes on.

| violation | outcome | why |
|---|---|---|
| no listings table for the date; both .parquet and .jsonl present | clear error | no snapshot, or an ambiguous one |
| listings with zero rows: Parquet with 0 rows, JSONL empty or only blank lines | clear error | an empty day would remove every listing from the index |
| Parquet without a required column | clear error | every row would fail the same way |
| Parquet column of a wrong type, required or optional (ids, ``category``, ``image_uri``: string; ``image_uris``: list<string>; ``title``/colour/shape/material: string or all-null; ``updated_at``: timestamp, ISO string or all-null) | clear error naming the column | every row would fail the same way |
| table file unreadable (corrupt Parquet, permission) | clear error | the snapshot cannot be read |
| JSONL line that is not UTF-8, not JSON, or not a JSON object | dead letter ``line N: reason; line starts '...'`` (40 characters at most, escaped) | one bad line; the rest are fine, and N finds it |
| missing or empty ``listing_id`` / ``review_id``, non-string id | dead letter | the row cannot be identified |
| ``image_uris`` missing, not a list, empty, or more than 10 | dead letter | contract: 1..10 images |
| image URI empty, ``..`` traversal, backslash or control char, unsupported scheme | dead letter | never opened |
| image URI outside CATALOG and not in an allowed bucket | dead letter | never opened |
| missing ``category``, or not a taxonomy path: fewer than 2 levels (``toys``) or an empty level (``home//mug``, ``/home/mug``) | dead letter | the label every model head needs; a bare word is a leaf-only export that would split a class in two |
| non-string title/colour/shape/material (a JSONL row), ``updated_at`` not an ISO timestamp | dead letter | wrong type means a broken export |
| ``image_checksums`` present but not a list of strings/nulls aligned with ``image_uris`` | dead letter | a wrong checksum would hide a changed photo |
| a string with a lone surrogate (invalid UTF-8) in any column | dead letter | no later step (Beam coders, Parquet) can encode it |
| the same ``listing_id`` on several listings rows, valid or rejected for another reason | dead letter for every copy (an invalid copy keeps its own reason; each valid copy gets "duplicate listing_id (N rows)") | we cannot know which copy is right |
| review whose listing is absent, rejected, or duplicated | dead letter | nothing to attach it to |

Optional ``image_checksums`` (list<string>, aligned with ``image_uris``, null where unknown): a
per-image content checksum or etag from the marketplace. The marketplace guarantees that an image
whose bytes change gets a new checksum; the daily embed then treats an image whose (URI, checksum)
was seen before as unchanged without listing or reading it. A checksum that does not change with
the bytes keeps the old embedding until the checksum changes or ``--full`` re-embeds.

Accepted as is: empty-string attributes become null; extra columns are ignored; the same image
twice in one listing is kept (real catalogs do that); blank JSONL lines are skipped (they still
count in line numbers); taxonomy paths of any depth from 2 (the generated catalogs use 3:
``home/kitchen/mug``). Duplicate ``review_id`` values are not checked (reviews carry no label of
their own).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core import storage
from core.deadletter import DeadLetter
from core.hashing import stable_fraction

MAX_IMAGES = 10
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class CatalogError(ValueError):
    """The whole snapshot is unusable (see the module docstring's table); the message says why."""


class InvalidRow(ValueError):
    """One row breaks the contract; it becomes a dead letter with ``reason``."""

    def __init__(self, reason: str, listing_id: str | None = None, uri: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.listing_id = listing_id
        self.uri = uri


@dataclass(frozen=True)
class Listing:
    listing_id: str
    image_uris: tuple[str, ...]  # resolved full URIs, first = primary
    title: str | None
    category: str  # taxonomy path of 2+ levels, "a/b" or "a/b/c"
    color: str | None = None
    shape: str | None = None
    material: str | None = None
    updated_at: dt.datetime | None = None
    # Optional per-image content checksum or etag aligned with image_uris (None: not provided for
    # that image): the daily embed then knows an image is unchanged with no listing and no read.
    image_checksums: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Review:
    review_id: str
    listing_id: str
    image_uri: str  # resolved full URI


@dataclass(frozen=True)
class ImageRef:
    listing_id: str
    image_index: int  # position in image_uris; -1 for a review photo
    uri: str
    kind: Literal["listing", "review"]
    review_id: str | None = None


# ------------------------------------------------------------------------ URIs


def bucket_names(allowed_buckets: Iterable[str]) -> frozenset[str]:
    """Accept ``name``, ``gs://name`` or ``gs://name/``; returns bare bucket names."""
    names = set()
    for b in allowed_buckets:
        name = b[len(storage.GCS_PREFIX) :] if b.startswith(storage.GCS_PREFIX) else b
        name = name.strip("/")
        if not name or "/" in name:
            raise ValueError(f"allowed bucket must be a bucket name or gs://name, got {b!r}")
        names.add(name)
    return frozenset(names)


def resolve_image_uri(uri: Any, catalog: str, allowed_buckets: Iterable[str] = ()) -> str:
    """A row's image URI -> the full URI to open, or InvalidRow if it must not be opened."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidRow("empty image URI", uri=None if uri is None else str(uri))
    if _BAD_CHARS.search(uri):
        raise InvalidRow("backslash or control character in image URI", uri=uri)
    m = _SCHEME.match(uri)
    path_part = uri[m.end() :] if m else uri
    if ".." in path_part.split("/"):
        raise InvalidRow("path traversal ('..') in image URI", uri=uri)
    root = storage.normalize(catalog)
    scheme = m.group(1).lower() if m else ""
    if scheme == "gs":
        bucket, _, name = path_part.partition("/")
        if not bucket or not name:
            raise InvalidRow("malformed gs:// image URI", uri=uri)
        full = f"gs://{bucket}/{name}"
        if (storage.is_gcs(root) and _under(full, root)) or bucket in bucket_names(allowed_buckets):
            return full
        raise InvalidRow("image URI outside the catalog root and allowed buckets", uri=uri)
    if scheme not in ("", "file"):
        raise InvalidRow(f"unsupported URI scheme {scheme}://", uri=uri)
    if scheme == "file" or uri.startswith("/"):
        full = os.path.normpath(path_part if path_part.startswith("/") else "/" + path_part)
        if not storage.is_gcs(root) and _under(full, root):
            return full
        raise InvalidRow("image URI outside the catalog root and allowed buckets", uri=uri)
    # Relative: "./a.jpg" and "a//b.jpg" mean what they say on a disk, so normalise them the
    # same way on gs:// (where they would otherwise name different objects).
    segments = [s for s in uri.split("/") if s not in ("", ".")]
    if not segments:
        raise InvalidRow("empty image URI", uri=uri)
    full = storage.join(root, *segments)
    if not _under(full, root):  # cannot happen without '..', kept as a second guard
        raise InvalidRow("image URI outside the catalog root", uri=uri)
    return full


def catalog_name(uri: str, catalog: str) -> str:
    """A resolved image URI as outputs name it: relative to CATALOG when under it (a workdir and
    catalog moved elsewhere still find it; no machine's paths leak into embeddings or API
    answers), else the full URI (an allowed bucket's ``gs://``). ``resolve_image_uri`` turns it
    back into the URI to open."""
    root = storage.normalize(catalog).rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else uri


def _under(full: str, root: str) -> bool:
    if storage.is_gcs(root):
        return full.startswith(root.rstrip("/") + "/")
    return os.path.normpath(full).startswith(root.rstrip(os.sep) + os.sep)


# ------------------------------------------------------------------------ rows


def parse_json_line(line: bytes | str) -> dict[str, Any]:
    """One JSON Lines record -> dict; raises InvalidRow for bad UTF-8, bad JSON, non-objects.

    The reason ends with a safe excerpt of the line; the reader, which knows where the line is,
    puts ``line N: `` in front.
    """
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        record = json.loads(text)
    except UnicodeDecodeError as e:
        raise InvalidRow(f"line is not UTF-8: {e.reason}; line starts {excerpt(line)}") from None
    except json.JSONDecodeError as e:
        raise InvalidRow(
            f"invalid JSON: {e.msg} at column {e.colno}; line starts {excerpt(text)}"
        ) from None
    if not isinstance(record, dict):
        raise InvalidRow(
            f"JSON line is a {type(record).__name__}, not an object; line starts {excerpt(text)}"
        )
    return record


def excerpt(value: bytes | str, limit: int = 40) -> str:
    """The first ``limit`` characters (or bytes) of untrusted text, safe to log and print.

    ``repr`` escapes control characters, terminal escapes and bidi overrides; ``...`` marks a cut.
    """
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def resolve_duplicates(
    listing_id: str,
    listings: Sequence[Listing],
    reviews: Sequence[Review],
    stage: str,
    invalid_copies: int = 0,
) -> tuple[list[Listing], list[Review], list[DeadLetter]]:
    """All rows sharing one listing_id -> (kept listings, kept reviews, dead letters).

    ``invalid_copies`` counts the rows with this id that were already rejected for another
    reason (they have their own dead letter): with them, a valid copy is a duplicate too.
    """
    copies = len(listings) + invalid_copies
    if len(listings) == 1 and copies == 1:
        return list(listings), list(reviews), []
    dead = [
        DeadLetter(
            listing_id,
            r.image_uri,
            stage,
            f"reviews: review {r.review_id} of "
            + (
                "a listing that is absent or rejected"
                if copies < 2
                else "a listing with a duplicate listing_id"
            ),
        )
        for r in reviews
    ]
    dead += [
        DeadLetter(
            listing_id,
            copy.image_uris[0],
            stage,
            duplicate_reason(copies),
        )
        for copy in listings
    ]
    return [], [], dead


def duplicate_reason(copies: int) -> str:
    """The dead-letter reason of each valid copy of a listing_id found on ``copies`` rows."""
    return f"listings: duplicate listing_id ({copies} rows); every copy rejected"


def listing_images(listing: Listing) -> list[ImageRef]:
    return [
        ImageRef(listing.listing_id, i, uri, "listing") for i, uri in enumerate(listing.image_uris)
    ]


def review_image(review: Review) -> ImageRef:
    return ImageRef(review.listing_id, -1, review.image_uri, "review", review.review_id)


def is_eval_listing(listing_id: str, eval_fraction: float = 0.2) -> bool:
    """Stable train/eval split by listing (``hashing.stable_fraction``: same in every process and run).

    All images and reviews of a listing fall on the same side, so eval never sees a product
    the model trained on. Never Python's hash(): it is salted per process.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    return stable_fraction(listing_id) < eval_fraction
