"""Search by photo on the generated catalog: embed -> build-index -> publish -> query.

The index must answer as the model does: a listing's own photo finds it first, and buyer review
photos find their listing in the top 10 at the exact-search rate of the same model, minus 0.02.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from core import paths, pointers, storage
from tests.conftest import copy_workdir
from vsearch.stages import DayRun, run_day

DAY = dt.date(2026, 1, 1)


def _recall_at_10(ranked: list[list[str]], truth: list[str]) -> float:
    return float(np.mean([t in r[:10] for r, t in zip(ranked, truth, strict=True)]))


def test_index_answers_as_the_model_does(
    tiny_catalog: str, trained_workdir: str, tmp_path: Path
) -> None:
    from core.embeddings import read_current_table
    from core.snapshot import read_snapshot
    from models.artifact import Embedder
    from search.photo_search import PhotoSearch

    workdir = copy_workdir(trained_workdir, str(tmp_path / "work"))
    run_day(DayRun(tiny_catalog, workdir, DAY), ("embed", "build-index", "publish"))
    version = pointers.read_pointer(paths.published_model_pointer(workdir)).value
    assert version

    snapshot = read_snapshot(tiny_catalog, DAY)
    listings = snapshot.listings
    reviews = list(snapshot.reviews)
    with PhotoSearch.open(workdir) as searcher:
        own = searcher.search([storage.read_bytes(x.image_uris[0]) for x in listings], k=5)
        found = searcher.search([storage.read_bytes(r.image_uri) for r in reviews], k=10)
    assert [h[0].listing_id for h in own] == [x.listing_id for x in listings]

    # Exact search with the same model over the same current embeddings, grouped by listing.
    table = read_current_table(tiny_catalog, workdir, DAY, version)
    db = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    db_ids = np.array(table.column("listing_id").to_pylist())
    queries = Embedder.open(workdir, version).embed_photos(
        [storage.read_bytes(r.image_uri) for r in reviews]
    )
    exact: list[list[str]] = []
    for scores in queries @ db.T:
        ranked: list[str] = []
        for i in np.argsort(-scores):
            if db_ids[i] not in ranked:
                ranked.append(str(db_ids[i]))
        exact.append(ranked)
    truth = [r.listing_id for r in reviews]
    index_recall = _recall_at_10([[h.listing_id for h in hits] for hits in found], truth)
    exact_recall = _recall_at_10(exact, truth)
    assert index_recall >= exact_recall - 0.02, (index_recall, exact_recall)
