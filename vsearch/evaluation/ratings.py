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

The grade scale lives here, with the one colour of each grade that every page and report uses.
Names starting with ``simulated-`` (any case) are reserved for the simulated rater: its ratings
carry ``"simulated": true`` and a person cannot rate under such a name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass

from core import paths, storage
from vsearch.evaluation.task import QUERY_ID

GRADES = {"relevant": 2, "partly": 1, "not": 0}
LABELS = {v: k for k, v in GRADES.items()}
RELEVANT, PARTLY = GRADES["relevant"], GRADES["partly"]
# One colour per grade, for every border, button and legend (rating page and report alike).
GRADE_COLOURS = {RELEVANT: "#2e7d32", PARTLY: "#f9a825", GRADES["not"]: "#c62828"}
UNRATED_COLOUR = "#9e9e9e"
SIMULATED_PREFIX = "simulated-"  # every simulated rater's name starts with this
_RATER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


class ReservedRaterName(ValueError):
    """A person asked to rate under a name reserved for the simulated rater."""


class RatingsError(ValueError):
    """A stored rating file cannot be read back; the message names the file."""


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
    if not isinstance(name, str) or not _RATER.fullmatch(name):
        raise ValueError(
            f"rater name {name!r} must be 1-40 letters, digits, '_', '.' or '-' "
            "(it names a folder of ratings)"
        )
    return name


def is_simulated_name(name: str) -> bool:
    return name.lower().startswith(SIMULATED_PREFIX)


def check_person(name: str) -> str:
    """A person's rater name: a valid name that does not pass for the simulated rater."""
    check_rater(name)
    if is_simulated_name(name):
        raise ReservedRaterName(
            f"rater names starting with {SIMULATED_PREFIX!r} are reserved for the simulated "
            f"rater (its ratings are labelled as not given by a person): choose another name"
        )
    return name


def display_grade(mean: float) -> int:
    """The grade whose colour shows a result's mean grade: the nearest one, a tie going to the
    lower grade (two raters saying relevant and partly show partly, never relevant)."""
    return min(LABELS, key=lambda g: (abs(g - mean), g))


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
        if not QUERY_ID.fullmatch(query_id):
            raise ValueError(f"bad query id {query_id!r}")
        return storage.join(
            self.root, check_rater(rater), query_id, f"{_listing_key(listing_id)}.json"
        )

    def put(
        self, rater: str, query_id: str, listing_id: str, grade: int, *, simulated: bool = False
    ) -> Rating:
        if grade not in LABELS:
            raise ValueError(f"grade must be 0, 1 or 2, got {grade!r}")
        # The name says who rated: a simulated rating only under a reserved name, and back.
        if simulated != is_simulated_name(check_rater(rater)):
            if simulated:
                raise ValueError(
                    f"simulated ratings go under a {SIMULATED_PREFIX}NAME, not {rater}"
                )
            check_person(rater)
        rating = Rating(
            rater,
            query_id,
            listing_id,
            grade,
            dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            simulated,
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
            _read_rating(uri)
            for uri in storage.list_prefix(prefix)
            if uri.endswith(".json")  # not a writer's temp file
        ]


def _read_rating(uri: str) -> Rating:
    try:
        rating = Rating(**json.loads(storage.read_text(uri)))
        if rating.grade not in LABELS:
            raise ValueError(f"grade {rating.grade!r}")
        return rating
    except (ValueError, TypeError) as e:
        raise RatingsError(f"rating file {uri} is not a rating: {e}") from e
