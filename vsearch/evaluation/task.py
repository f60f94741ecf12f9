"""The rating task: one JSON file that says which query photos to show and which results beside them.

Written by ``vsearch eval-sample``, read by ``vsearch rate``, ``vsearch eval-report`` and the
simulated rater. Everything a rater sees comes from this file: the app serves only image URIs
listed here (by their position in :meth:`RatingTask.image_uris`, never by a path from the request).

Ids are stable: a query's id is a hash of its photo's URI, so re-sampling with the same seed on a
new index keeps the ratings already given to (query, listing) pairs that appear again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core import storage
from core.settings import doc

FORMAT_VERSION = 1
# The --task flag of rate, eval-simulate and eval-report.
TASK = doc("rating task URI (task.json written by vsearch eval-sample)")
QueryKind = Literal["listing", "review"]
KINDS: tuple[QueryKind, ...] = ("listing", "review")
# A query id names a folder of ratings and is written into the rating page's script: letters,
# digits, '_' and '-' only (``query_id`` makes "q" + 12 hex digits), so no id can hold "../".
QUERY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TaskError(ValueError):
    """The task file is missing, not JSON, or not a rating task; the message names the file."""


@dataclass(frozen=True)
class Result:
    listing_id: str
    image_uri: str  # the listing's best-matching photo
    score: float  # cosine similarity given by the model
    category: str | None  # the catalog's category of the listing (ground truth, not predicted)


@dataclass(frozen=True)
class Query:
    query_id: str
    image_uri: str
    kind: QueryKind  # a listing photo (other listings like it) or a buyer's review photo
    listing_id: str  # the listing the photo belongs to
    category: str  # the catalog's category of that listing
    stratum: str  # the category level the query was drawn for
    results: dict[str, list[Result]]  # model version -> top-k results, best first
    # Side-by-side: the order the two lists are shown in (left, right), drawn per query with a
    # seeded RNG so a rater cannot learn "the candidate is always on the left".
    sides: tuple[str, ...] = ()

    @property
    def known_relevant(self) -> str | None:
        """The listing known to be relevant without asking anyone: a review photo's own listing
        (the buyer photographed that item). A listing photo has none: its own listing is left out
        of its results on purpose (``retrieve.py``)."""
        return self.listing_id if self.kind == "review" else None


@dataclass(frozen=True)
class RatingTask:
    task_id: str
    created_at: str
    workdir: str
    catalog: str
    date: str
    k: int
    seed: int
    models: tuple[str, ...]  # (model,) or (candidate, baseline) for side by side
    retrieval: dict[str, str]  # model version -> "index BUILD_ID" or "exact search"
    queries: list[Query] = field(default_factory=list)
    # Query photos drawn but not used (unreadable or undecodable), with the reason: never silent.
    skipped: list[dict[str, str]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def side_by_side(self) -> bool:
        return len(self.models) == 2

    @property
    def candidate(self) -> str:
        return self.models[0]

    @property
    def baseline(self) -> str | None:
        return self.models[1] if self.side_by_side else None

    def photo_uri(self, name: str) -> str:
        """A photo as this file names it -> the URI to open. Search results name photos as the
        catalog does (relative to CATALOG); query photos were written resolved."""
        if name.startswith("/") or "://" in name:
            return name
        return storage.join(self.catalog, name)

    def query(self, query_id: str) -> Query:
        for q in self.queries:
            if q.query_id == query_id:
                return q
        raise KeyError(query_id)

    def results_of(self, query: Query) -> list[Result]:
        """Every distinct listing shown for a query (a listing both models return is rated once)."""
        seen: dict[str, Result] = {}
        for version in self.models:
            for r in query.results.get(version, [])[: self.k]:  # what the page shows
                seen.setdefault(r.listing_id, r)
        return list(seen.values())

    def image_uris(self) -> list[str]:
        """Every image the app may serve, in a fixed order (the app serves them by position)."""
        uris: dict[str, None] = {}
        for q in self.queries:
            uris[q.image_uri] = None
            for r in self.results_of(q):
                uris[r.image_uri] = None
        return list(uris)

    def total_results(self) -> int:
        return sum(len(self.results_of(q)) for q in self.queries)


def query_id(image_uri: str) -> str:
    return "q" + hashlib.sha256(image_uri.encode()).hexdigest()[:12]


def to_json(task: RatingTask) -> str:
    return json.dumps(asdict(task), indent=1, sort_keys=True) + "\n"


def write_task(uri: str, task: RatingTask) -> None:
    storage.write_text(uri, to_json(task))


def _result(d: dict[str, Any]) -> Result:
    return Result(str(d["listing_id"]), str(d["image_uri"]), float(d["score"]), d.get("category"))


def _query(d: dict[str, Any], models: tuple[str, ...]) -> Query:
    qid = str(d["query_id"])
    if not QUERY_ID.fullmatch(qid):
        raise ValueError(f"query id {qid!r} is not 1-64 letters, digits, '_' or '-'")
    if d["kind"] not in KINDS:
        raise ValueError(f"query {qid} has kind {d['kind']!r}, not one of {KINDS}")
    results = {str(v): [_result(r) for r in rs] for v, rs in dict(d["results"]).items()}
    missing = [v for v in models if v not in results]
    if missing:
        raise ValueError(f"query {qid} has no results for model(s) {missing}")
    for v, rs in results.items():
        ids = [r.listing_id for r in rs]
        if len(set(ids)) != len(ids):  # it would be rated once and counted twice
            raise ValueError(f"query {qid} lists a listing twice in the results of {v}")
    sides = tuple(str(v) for v in d.get("sides") or ())
    if sides and sorted(sides) != sorted(models):
        raise ValueError(f"query {qid} shows sides {list(sides)}, not the models {list(models)}")
    return Query(
        query_id=qid,
        image_uri=str(d["image_uri"]),
        kind=d["kind"],
        listing_id=str(d["listing_id"]),
        category=str(d["category"]),
        stratum=str(d.get("stratum", d["category"])),
        results=results,
        sides=sides,
    )


def parse_task(text: str, uri: str = "<task>") -> RatingTask:
    """A task from its JSON text; any problem is one :class:`TaskError` naming the file."""
    try:
        d = json.loads(text)
        if not isinstance(d, dict) or "queries" not in d or "models" not in d:
            raise ValueError("not a rating task (no 'queries' or 'models'; made by eval-sample?)")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {d.get('format_version')!r} != {FORMAT_VERSION}")
        models = tuple(str(m) for m in d["models"])
        if len(models) not in (1, 2):
            raise ValueError(f"a task compares 1 or 2 models, this one names {len(models)}")
        queries = [_query(q, models) for q in d["queries"]]
        if not queries:
            raise ValueError("the task has no queries")
        if len({q.query_id for q in queries}) != len(queries):
            raise ValueError("two queries share one query id")
        if int(d["k"]) < 1:
            raise ValueError(f"k must be at least 1, got {d['k']}")
        return RatingTask(
            task_id=str(d["task_id"]),
            created_at=str(d["created_at"]),
            workdir=str(d["workdir"]),
            catalog=str(d["catalog"]),
            date=str(d["date"]),
            k=int(d["k"]),
            seed=int(d["seed"]),
            models=models,
            retrieval={str(k): str(v) for k, v in dict(d.get("retrieval", {})).items()},
            queries=queries,
            skipped=[dict(x) for x in d.get("skipped", [])],
        )
    except TaskError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        reason = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise TaskError(f"bad rating task {uri}: {reason}") from e


def read_task(uri: str) -> RatingTask:
    if not storage.exists(uri):
        raise TaskError(f"rating task {uri} does not exist (write one with vsearch eval-sample)")
    try:
        text = storage.read_text(uri)
    except (storage.StorageError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read rating task {uri}: {e}") from e
    return parse_task(text, uri)
