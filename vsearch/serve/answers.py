"""Answers for a batch of search requests: one model call, one search per (k, filter), one index.

Every request of a batch is answered from the same served index (taken once for the whole
batch), so each gets that index's build id even if a swap happens meanwhile. The photos of all
requests go through one ``embed_each`` call, which isolates bad photos: a bad photo is an error
in its own request's answer and costs no other request anything. Requests whose filter this
index cannot apply get their own 400 and are not embedded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.per_photo import EmbeddedPhotos, embed_each
from vsearch.serve.batcher import Job
from vsearch.serve.filters import Filter
from vsearch.serve.holder import IndexHolder, NotReady, ServedIndex
from vsearch.serve.uploads import ApiError


@dataclass(frozen=True)
class Query:
    k: int
    filter: Filter


@dataclass(frozen=True)
class Answered:
    served: ServedIndex
    results: list[dict[str, Any]]  # one per photo (``error`` set for a bad photo)
    fallbacks: int  # filtered queries answered by the exact fallback


def answer_batch(holder: IndexHolder, jobs: Sequence[Job]) -> list[Answered | Exception]:
    """One outcome per job (params: a :class:`Query`), all on the index in service now."""
    try:
        with holder.use() as served:
            return answer_on(served, jobs)
    except NotReady as e:
        return [e] * len(jobs)


def answer_on(served: ServedIndex, jobs: Sequence[Job]) -> list[Answered | Exception]:
    outcomes: list[Answered | Exception | None] = [None] * len(jobs)
    ok: list[int] = []
    for j, job in enumerate(jobs):
        try:
            check_available(served, job.params.filter)
            ok.append(j)
        except ApiError as e:
            outcomes[j] = e
    photos = [p for j in ok for p in jobs[j].photos]
    embedded = embed_each(served.photos, photos)
    # Each job's rows in the embedded batch.
    rows: dict[int, list[int]] = {}
    start = 0
    for j in ok:
        rows[j] = list(range(start, start + len(jobs[j].photos)))
        start += len(jobs[j].photos)
    # One search per distinct (k, filter): the search's over-fetch depends on both.
    groups: dict[tuple[int, Any], list[int]] = {}
    for j in ok:
        q: Query = jobs[j].params
        groups.setdefault((q.k, q.filter.key()), []).append(j)
    for members in groups.values():
        q = jobs[members[0]].params
        good = [r for j in members for r in rows[j] if embedded.errors[r] is None]
        fallbacks = 0

        def search(vectors: np.ndarray, k: int, f: Filter = q.filter) -> list[list[Any]]:
            nonlocal fallbacks
            found, took = served.search.search(vectors, k, f)
            fallbacks += took
            return found

        hits = dict(zip(good, embedded.search(search, good, q.k), strict=True))
        for n, j in enumerate(members):
            results = [_result(served, embedded, r, hits.get(r)) for r in rows[j]]
            # The group's fallback count goes to its first request (the metric sums them).
            outcomes[j] = Answered(served, results, fallbacks if n == 0 else 0)
    return [o if o is not None else RuntimeError("unanswered") for o in outcomes]


def check_available(served: ServedIndex, f: Filter) -> None:
    for name in f.fields():
        if name not in served.attributes.match:
            raise ApiError(
                400,
                "filter_unavailable",
                f"filter {name!r} is not available: attributes come from "
                f"{served.attributes.source} (start the service with --catalog)",
            )


def item_score(x: float) -> float | None:
    """The localiser's confidence that the photo shows an item; None without a localiser."""
    return None if x != x else round(float(x), 4)


def _result(
    served: ServedIndex,
    embedded: EmbeddedPhotos,
    i: int,
    hits: list[tuple[Any, list[float]]] | None,
) -> dict[str, Any]:
    error = embedded.errors[i]
    if error is not None:
        return {"error": {"code": "not_an_image", "message": error}}
    assert hits is not None
    score = item_score(float(embedded.item_scores[i]))
    return {
        "no_match": served.calibration.no_match(hits[0][0].score if hits else None, score),
        "item_score": score,
        "results": [
            {
                "listing_id": h.listing_id,
                "score": round(h.score, 6),
                "image_uri": h.image_uri,
                "image_index": h.image_index,
                "attributes": served.attributes.of(h.code),
                # The part of the photo that found it (fractions of width and height): the
                # whole photo, or one of the boxes the model's localiser found.
                "box": box,
            }
            for h, box in hits
        ],
    }
