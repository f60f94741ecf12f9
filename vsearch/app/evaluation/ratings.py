"""Ratings: one small JSON file per (rater, query, result), written atomically as it is given.

``TASK_DIR/ratings/RATER/QUERY_ID/LISTING_HASH.json``. One file per judgement means:

* nothing is lost on a crash or a reload: the server answers the browser only after the file is
  under its final name (``storage.write_text`` writes ``NAME.tmp`` + fsync + rename locally, and a
  GCS object appears only when its upload completes);
* repeating a rating is idempotent and changing one is last-write-wins (the same name is
  overwritten), with no log to fold;
* two raters never write the same file, so they can rate at once, from one server or two;
* the same layout works on ``gs://``.

A result is a listing: a listing both models return for a query is rated once, for both lists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass

from vsearch.core import paths, storage

GRADES = {"relevant": 2, "partly": 1, "not": 0}
LABELS = {v: k for k, v in GRADES.items()}
SIMULATED_PREFIX = "simulated-"  # every simulated rater's name starts with this
_RATER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class Rating:
    rater: str
    query_id: str
    listing_id: str
    grade: int  # 2 relevant, 1 partly, 0 not
    at: str  # UTC ISO time the rating was given
    simulated: bool = False  # given by the simulated rater from catalog ground truth

    @property
    def label(self) -> str:
        return LABELS[self.grade]


def check_rater(name: str) -> str:
    """Rater names become folder names: letters, digits, ``_ . -``, at most 40 characters."""
    if not _RATER.match(name or ""):
        raise ValueError(
            f"rater name {name!r} must be 1-40 letters, digits, '_', '.' or '-' "
            "(it names a folder of ratings)"
        )
    return name


def grade_of(label: str) -> int:
    if label not in GRADES:
        raise ValueError(f"rating must be one of {sorted(GRADES)}, got {label!r}")
    return GRADES[label]


def _listing_key(listing_id: str) -> str:
    # Listing ids are the marketplace's strings: hash them into a safe file name.
    return hashlib.sha256(listing_id.encode()).hexdigest()[:20]


class RatingStore:
    """Ratings of one task; every call reads or writes storage (no cache to go stale)."""

    def __init__(self, task_uri: str) -> None:
        self.root = paths.eval_ratings_dir(task_uri)

    def _uri(self, rater: str, query_id: str, listing_id: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,64}$", query_id):
            raise ValueError(f"bad query id {query_id!r}")
        return storage.join(
            self.root, check_rater(rater), query_id, f"{_listing_key(listing_id)}.json"
        )

    def put(
        self, rater: str, query_id: str, listing_id: str, grade: int, *, simulated: bool = False
    ) -> Rating:
        if grade not in LABELS:
            raise ValueError(f"grade must be 0, 1 or 2, got {grade!r}")
        rating = Rating(
            rater,
            query_id,
            listing_id,
            grade,
            dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            simulated or rater.startswith(SIMULATED_PREFIX),
        )
        storage.write_text(
            self._uri(rater, query_id, listing_id), json.dumps(asdict(rating), sort_keys=True)
        )
        return rating

    def of_rater(self, rater: str) -> dict[tuple[str, str], Rating]:
        """(query_id, listing_id) -> rating, for one rater."""
        return {
            (r.query_id, r.listing_id): r
            for r in self._read(storage.join(self.root, check_rater(rater)))
        }

    def all(self) -> dict[str, dict[tuple[str, str], Rating]]:
        """rater -> (query_id, listing_id) -> rating."""
        out: dict[str, dict[tuple[str, str], Rating]] = {}
        for r in self._read(self.root):
            out.setdefault(r.rater, {})[(r.query_id, r.listing_id)] = r
        return out

    def _read(self, prefix: str) -> list[Rating]:
        if not storage.is_gcs(prefix) and not storage.exists(prefix):
            return []
        return [
            Rating(**json.loads(storage.read_text(uri)))
            for uri in storage.list_prefix(prefix)
            if uri.endswith(".json")  # not a writer's temp file
        ]
