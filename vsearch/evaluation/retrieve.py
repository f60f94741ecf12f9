"""Top-k listings of a model version for query photos: the published index, or exact search.

The published model is evaluated through the index users hit (``PhotoSearch``: its PCA, shards
and search parameters included). A model with no published index (a candidate before promotion)
is searched exactly over its current embeddings for the day (``read_current_table``): it needs
``vsearch embed --model CANDIDATE`` first. Exact search is slower but fine at rating-task scale;
it slightly favours the candidate (no ANN loss), which the report states beside the results.

A listing photo's own listing is left out of its results (it would be a trivially relevant first
hit); a review photo's listing is kept (finding it is the point).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from core import embeddings, paths, pointers
from index.source import batch_vectors
from models.artifact import Embedder

Hit = tuple[str, str, float]  # (listing_id, image_uri, score)


def published_index_version(workdir: str) -> str | None:
    """The model version of the index ``indexes/CURRENT`` points at, if any."""
    from index import manifest

    pointer = pointers.read_pointer(paths.current_index_pointer(workdir))
    return manifest.read(pointer.value).model_version if pointer.value else None


def _drop_own(hits: list[Hit], own: str | None, k: int) -> list[Hit]:
    return [h for h in hits if h[0] != own][:k]


def search_index(
    workdir: str, photos: Sequence[bytes], own: Sequence[str | None], k: int
) -> tuple[str, list[list[Hit]]]:
    """Through the published index; returns ("index BUILD_ID", hits per photo)."""
    from search.photo_search import PhotoSearch

    with PhotoSearch.open(workdir) as search:
        found = search.search(list(photos), k + 1)
        label = f"index {search.manifest.build_id}"
    return label, [
        _drop_own([(h.listing_id, h.image_uri, float(h.score)) for h in hits], o, k)
        for hits, o in zip(found, own, strict=True)
    ]


def search_exact(
    catalog: str,
    workdir: str,
    date: dt.date | str,
    version: str,
    photos: Sequence[bytes],
    own: Sequence[str | None],
    k: int,
) -> tuple[str, list[list[Hit]]]:
    """Exact inner-product search over ``version``'s current embeddings for ``date``."""
    table = embeddings.read_current_table(catalog, workdir, date, version)
    if table.num_rows == 0:
        raise FileNotFoundError(
            f"model {version} has no embeddings for {date} under "
            f"{paths.embeddings_root(workdir, version)}: run "
            f"`vsearch embed --model {version} --full` for that date first"
        )
    matrix = batch_vectors(table)
    ids = table.column("listing_id").to_pylist()
    uris = table.column("image_uri").to_pylist()
    # The safe Pillow decode, then the pixel signature: as search by photo embeds a query.
    queries = Embedder.open(workdir, version).embed_photos(list(photos))
    out: list[list[Hit]] = []
    for vec, o in zip(queries, own, strict=True):
        scores = matrix @ vec
        best: dict[str, Hit] = {}  # best image per listing, as the index groups hits
        for i in np.argsort(-scores):
            lid = ids[i]
            if lid not in best:
                best[lid] = (lid, uris[i], float(scores[i]))
                if len(best) > k:
                    break
        out.append(_drop_own(list(best.values()), o, k))
    return "exact search", out


def retrieve(
    catalog: str,
    workdir: str,
    date: dt.date | str,
    version: str,
    photos: Sequence[bytes],
    own: Sequence[str | None],
    k: int,
) -> tuple[str, list[list[Hit]]]:
    """The index when it serves ``version``, else exact search over its embeddings."""
    if published_index_version(workdir) == version:
        return search_index(workdir, photos, own, k)
    return search_exact(catalog, workdir, date, version, photos, own, k)
