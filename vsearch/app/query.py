"""``vsearch query IMAGE... [--k 20] [--json] --workdir W``: search by photo from the command line."""

from __future__ import annotations

import json
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
    from vsearch.app.photo_search import PhotoSearch

    photos = [storage.read_bytes(uri) for uri in settings.images]
    with PhotoSearch.open(settings.workdir, cache_dir=settings.cache_dir) as searcher:
        results = searcher.search(photos, settings.k)
        build = searcher.manifest.build_id
    for uri, hits in zip(settings.images, results, strict=True):
        if settings.json:
            print(
                json.dumps({"image": uri, "index_build": build, "hits": [asdict(h) for h in hits]})
            )
            continue
        print(f"{uri}  (index {build})")
        for rank, h in enumerate(hits, 1):
            print(f"  {rank:>3}. {h.listing_id}  {h.score:.4f}  {h.category or '-'}")
