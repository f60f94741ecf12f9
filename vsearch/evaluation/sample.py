"""``vsearch eval-sample``: draw a stratified set of query photos, retrieve top-k, write a rating task.

Stratified by category so that rare categories are rated too (a uniform draw of 50 photos from a
catalog where 3 categories hold 90 % of listings would never show the long tail): every stratum
gets one query, the rest are shared in proportion to the stratum's size. When there are more
categories than queries, strata are the taxonomy cut one level higher (``a/b/c`` -> ``a/b`` ->
``a``), so every top-level category is still represented. Within a stratum about
``review_fraction`` of the queries are buyers' review photos (the hard case: phone photos) and the
rest are listing photos (primary image; at most one query per listing). Same seed, same queries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core import images, paths, pointers, snapshot, storage
from core.settings import CATALOG, DATE_STR, WORKDIR, doc
from vsearch.evaluation import retrieve
from vsearch.evaluation.task import Query, RatingTask, Result, query_id, write_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSettings:
    workdir: str = field(metadata=WORKDIR)
    date: str = field(metadata=DATE_STR)  # the snapshot the queries come from
    # The CATALOG root whose day-D snapshot the queries (and their ground truth) come from.
    catalog: str = field(metadata=CATALOG)
    model: str | None = field(
        default=None, metadata=doc("model VERSION to rate (default: the published model)")
    )
    against: str | None = field(  # None: rate one model
        default=None, metadata=doc("a second model VERSION: blind side-by-side")
    )
    queries: int = field(  # ~30 min of rating at k=10; enough for a sign test to see a clear loss
        default=50, metadata=doc("query photos to draw (every category gets at least one)")
    )
    k: int = field(default=10, metadata=doc("results per query (a shopper's first screen)"))
    seed: int = field(default=0, metadata=doc("same seed, same queries and left/right order"))
    review_fraction: float = field(  # review photos are the hard, user-like queries
        default=0.5, metadata=doc("share of queries that are buyers' review photos")
    )


@dataclass(frozen=True)
class Candidate:
    uri: str
    kind: str  # "listing" or "review"
    listing_id: str
    category: str


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def strata_level(categories: Sequence[str], n: int) -> int:
    """The deepest taxonomy depth whose distinct categories fit in ``n`` queries."""
    depth = max(c.count("/") + 1 for c in categories)
    for level in range(depth, 0, -1):
        if len({"/".join(c.split("/")[:level]) for c in categories}) <= n:
            return level
    top = len({c.split("/")[0] for c in categories})
    raise ValueError(
        f"--queries {n} cannot represent the {top} top-level categories: ask for at least {top}"
    )


def allocate(sizes: dict[str, int], available: dict[str, int], n: int) -> dict[str, int]:
    """One query per stratum, the rest by size (largest remainder), never above what is there."""
    alloc = {s: min(1, available[s]) for s in sizes}
    for _ in range(n):
        left = n - sum(alloc.values())
        open_ = [s for s in sizes if alloc[s] < available[s]]
        if left <= 0 or not open_:
            break
        total = sum(sizes[s] for s in open_)
        # Give the next query to the stratum furthest below its proportional share.
        target = {s: sizes[s] / total * (sum(alloc[o] for o in open_) + left) for s in open_}
        best = max(open_, key=lambda s: (target[s] - alloc[s], s))
        alloc[best] += 1
    return alloc


def draw(
    candidates: Sequence[Candidate], n: int, seed: int, review_fraction: float
) -> list[Candidate]:
    """The stratified query set (deterministic for a seed); see the module docstring."""
    if not candidates:
        raise ValueError("the snapshot has no photos to draw queries from")
    level = strata_level([c.category for c in candidates], n)
    by: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by["/".join(c.category.split("/")[:level])].append(c)
    listings = {s: len({c.listing_id for c in cs}) for s, cs in by.items()}
    alloc = allocate(listings, {s: len(cs) for s, cs in by.items()}, n)
    chosen: list[Candidate] = []
    for stratum in sorted(by):
        rng = np.random.default_rng([seed, _stable(stratum) % (2**32)])
        pool = sorted(by[stratum], key=lambda c: c.uri)
        reviews = [pool[i] for i in rng.permutation(len(pool)) if pool[i].kind == "review"]
        photos = [pool[i] for i in rng.permutation(len(pool)) if pool[i].kind == "listing"]
        m = alloc[stratum]
        want_reviews = min(len(reviews), round(m * review_fraction))
        picked = reviews[:want_reviews] + photos[: m - want_reviews]
        picked += reviews[want_reviews : want_reviews + m - len(picked)]
        chosen += picked
    return chosen


def candidates_of(catalog: str, date: str) -> list[Candidate]:
    snap = snapshot.read_snapshot(catalog, paths.parse_date(date))
    category = {lst.listing_id: lst.category for lst in snap.listings}
    out = [
        Candidate(lst.image_uris[0], "listing", lst.listing_id, lst.category)
        for lst in snap.listings
    ]
    out += [
        Candidate(r.image_uri, "review", r.listing_id, category[r.listing_id])
        for r in snap.reviews
        if r.listing_id in category
    ]
    return out


def _task_id(s: SampleSettings, model: str) -> str:
    vs = f"_vs_{s.against}" if s.against else ""
    return f"{s.date}_{model}{vs}_q{s.queries}_s{s.seed}"


def run(s: SampleSettings) -> str:
    """Write the rating task; returns its URI (``WORKDIR/eval/TASK_ID/task.json``)."""
    paths.parse_date(s.date)
    if s.queries < 1 or s.k < 1:
        raise ValueError("--queries and --k must be at least 1")
    model = s.model or pointers.read_pointer(paths.published_model_pointer(s.workdir)).value
    if not model:
        raise FileNotFoundError(
            f"no --model and no published model at {paths.published_model_pointer(s.workdir)}"
        )
    if s.against == model:
        raise ValueError(f"--against {s.against} is the model itself: nothing to compare")
    catalog = s.catalog
    pool = candidates_of(catalog, s.date)
    category = {c.listing_id: c.category for c in pool}
    drawn = draw(pool, s.queries, s.seed, s.review_fraction)
    photos: list[bytes] = []
    kept: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    for c in drawn:
        try:
            data = storage.read_bytes(c.uri)
            images.decode_image(data, 32)  # refuse a photo the model would refuse, here
        except (storage.StorageError, images.ImageError) as e:
            log.warning("eval-sample: skipping query photo %s: %s", c.uri, e)
            skipped.append({"uri": c.uri, "reason": str(e)})
            continue
        photos.append(data)
        kept.append(c)
    if not kept:
        raise RuntimeError(
            f"none of the {len(drawn)} drawn query photos could be read: {skipped[:3]}"
        )
    versions = (model, s.against) if s.against else (model,)
    own = [c.listing_id if c.kind == "listing" else None for c in kept]
    results: dict[str, list[list[retrieve.Hit]]] = {}
    how: dict[str, str] = {}
    for v in versions:
        how[v], results[v] = retrieve.retrieve(catalog, s.workdir, s.date, v, photos, own, s.k)
    level = strata_level([c.category for c in pool], s.queries)
    queries = []
    for i, c in enumerate(kept):
        qid = query_id(c.uri)
        sides: tuple[str, ...] = ()
        if s.against:
            flip = np.random.default_rng([s.seed, _stable(qid) % (2**32)]).random() < 0.5
            sides = tuple(reversed(versions)) if flip else versions
        queries.append(
            Query(
                query_id=qid,
                image_uri=c.uri,
                kind="review" if c.kind == "review" else "listing",
                listing_id=c.listing_id,
                category=c.category,
                stratum="/".join(c.category.split("/")[:level]),
                results={
                    v: [
                        Result(lid, uri, score, category.get(lid))
                        for lid, uri, score in results[v][i]
                    ]
                    for v in versions
                },
                sides=sides,
            )
        )
    task = RatingTask(
        task_id=_task_id(s, model),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        workdir=storage.normalize(s.workdir),
        catalog=storage.normalize(catalog),
        date=s.date,
        k=s.k,
        seed=s.seed,
        models=versions,
        retrieval=how,
        queries=queries,
        skipped=skipped,
    )
    uri = paths.eval_task(s.workdir, task.task_id)
    write_task(uri, task)
    return uri


def cli_run(s: SampleSettings) -> str:
    uri = run(s)
    print(f"[eval-sample] rating task: {uri}")
    print(f"  rate it:  vsearch rate --task {uri}")
    return uri
