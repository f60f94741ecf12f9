"""``vsearch query IMAGE... [--k 20] [--json] --workdir W``: search by photo from the command line."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

from vsearch.core import storage
from vsearch.core.settings import WORKDIR, doc


@dataclass(frozen=True)
class QuerySettings:
    images: tuple[str, ...] = field(
        metadata=doc("image file or URI (JPEG, PNG, ...)", positional=True, metavar="IMAGE")
    )
    workdir: str = field(metadata=WORKDIR)
    k: int = field(default=20, metadata=doc("listings per photo"))
    json: bool = field(default=False, metadata=doc("one JSON object per photo"))
    cache_dir: str | None = field(
        default=None, metadata=doc("local copy of gs:// shards (default: $TMPDIR)")
    )

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")


def run(settings: QuerySettings) -> None:
    """Print the top-k listings of each photo; a bad photo is reported on its own line (stderr,
    and as ``{"error": ...}`` with --json) while the others are answered; then exit 1."""
    from index.searcher import Hit
    from vsearch.app.per_photo import embed_each
    from vsearch.app.photo_search import PhotoSearch

    errors: dict[int, str] = {}
    photos: dict[int, bytes] = {}
    for i, uri in enumerate(settings.images):
        try:
            photos[i] = storage.read_bytes(uri)
        except storage.StorageError as e:
            errors[i] = str(e)
    results: dict[int, list[Hit]] = {}
    with PhotoSearch.open(settings.workdir, cache_dir=settings.cache_dir) as searcher:
        order = sorted(photos)
        vectors, bad = embed_each(searcher, [photos[i] for i in order])
        errors.update({i: e for i, e in zip(order, bad, strict=True) if e is not None})
        good = [j for j, i in enumerate(order) if i not in errors]
        if good:
            found = searcher.searcher.search_vectors(vectors[good], settings.k)
            results = {order[j]: hits for j, hits in zip(good, found, strict=True)}
        build = searcher.manifest.build_id
    for i, uri in enumerate(settings.images):
        if i in errors:
            if settings.json:
                print(json.dumps({"image": uri, "index_build": build, "error": errors[i]}))
            print(f"vsearch query: {uri}: error: {errors[i]}", file=sys.stderr)
            continue
        hits = results[i]
        if settings.json:
            print(
                json.dumps({"image": uri, "index_build": build, "hits": [asdict(h) for h in hits]})
            )
            continue
        print(f"{uri}  (index {build})")
        for rank, h in enumerate(hits, 1):
            print(f"  {rank:>3}. {h.listing_id}  {h.score:.4f}  {h.category or '-'}")
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {len(settings.images)} photos could not be searched (listed above)"
        )
