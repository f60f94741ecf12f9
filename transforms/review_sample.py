"""``ReviewSample``: a bounded, seeded sample of the day's review photos of current listings.

build-index embeds these photos as extra validation queries: they are what shoppers send, and
unlike database vectors they are never in the index. Only the sample reaches the driver:

    reviews table, read in parallel (Parquet row groups, JSONL byte ranges) -> valid reviews -> the 2n of smallest seeded rank (Top) ┐
    listing tables (ReadListingTables) -> those of the 2n candidates' listings that are current ┤
        -> the n candidates of smallest rank whose listing is current -> one small JSON file

Twice the candidates because a review's listing may have left the catalog (rare: the catalog's
contract makes an orphan review a dead letter), so a day still gets ``n`` queries.
A rejected reviews row is left out: it is check-catalog's dead letter to report, not this stage's.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from core import catalog as cat
from core import catalog_rules, snapshot, storage
from core.catalog import Review
from core.hashing import stable_hash
from transforms.read_catalog import REVIEWS
from transforms.read_table_rows import ROWS, ReadTableRows

SAMPLE_FILE = "review_sample.json"


def _rank(seed: int, review: Review) -> int:
    return stable_hash(f"{seed}|{review.review_id}")


class _ValidReviews(beam.DoFn):  # type: ignore[misc]
    """A reviews row -> its Review when valid; a rejected row is left out (check-catalog's dead
    letter to report, not this stage's)."""

    def __init__(self, catalog: str, allowed: tuple[str, ...]) -> None:
        self._catalog, self._allowed = catalog, allowed

    def process(self, row: dict[str, Any]) -> Iterator[Review]:
        try:
            yield catalog_rules.parse_review(row, self._catalog, self._allowed)
        except cat.InvalidRow:
            return


def _current_ids(listings: pa.Table, candidates: list[Review]) -> Iterator[str]:
    wanted = pa.array(sorted({r.listing_id for r in candidates}), pa.string())
    ids = listings.column("listing_id")
    yield from ids.filter(pc.is_in(ids, value_set=wanted)).to_pylist()


def _pick(candidates: list[Review], current: list[str], size: int, seed: int) -> list[Review]:
    kept = set(current)
    ranked = sorted(candidates, key=lambda r: _rank(seed, r))
    return [r for r in ranked if r.listing_id in kept][:size]


def write_sample(reviews: list[Review], uri: str) -> None:
    rows = [[r.review_id, r.listing_id, r.image_uri] for r in reviews]
    storage.write_text(uri, json.dumps(rows))


def read_sample(uri: str) -> list[Review]:
    return [Review(*row) for row in json.loads(storage.read_text(uri))]


class ReviewSample(beam.PTransform):  # type: ignore[misc]
    """Listing tables (``LISTING_TABLE``) -> writes up to ``size`` reviews of current listings
    to ``uri`` (``read_sample`` reads them back); a day without a reviews table writes none."""

    def __init__(
        self,
        catalog: str,
        date: dt.date,
        uri: str,
        size: int,
        seed: int,
        allowed_buckets: Iterable[str] = (),
        stage: str = "build-index",
    ) -> None:
        super().__init__()
        self._stage = stage  # names the reviews table's unreadable lines (left out here)
        self._catalog, self._date, self._uri = storage.normalize(catalog), date, uri
        self._size, self._seed = size, seed
        self._allowed = tuple(sorted(cat.bucket_names(allowed_buckets)))

    def expand(self, listings: beam.PCollection) -> beam.PCollection:
        table = snapshot.find_table(self._catalog, self._date, REVIEWS)
        pbegin = listings.pipeline
        if table is None:
            valid = pbegin | "NoReviews" >> beam.Create([])
        else:  # the catalog's one reader: Parquet row groups or JSONL byte ranges, in parallel
            rows = _ValidReviews(self._catalog, self._allowed)
            valid = (pbegin | "ReadReviews" >> ReadTableRows(table, self._stage, rows))[ROWS]
        seed, size = self._seed, self._size
        candidates = valid | "Candidates" >> beam.combiners.Top.Of(
            2 * size, key=lambda r: _rank(seed, r), reverse=True
        )
        current = listings | "CurrentListings" >> beam.FlatMap(
            _current_ids, beam.pvalue.AsSingleton(candidates)
        )
        uri = self._uri
        return (
            candidates
            | "Pick" >> beam.Map(_pick, beam.pvalue.AsList(current), size, seed)
            | "WriteSample" >> beam.Map(write_sample, uri)
        )
