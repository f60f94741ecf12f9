"""``vsearch query IMAGE... [--k 20] [--json] --workdir W``: search by photo from the command line."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

from core import storage
from core.settings import WORKDIR, doc


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


def _box_text(box: list[float]) -> str:
    return f"x {box[0]:.2f}-{box[2]:.2f}, y {box[1]:.2f}-{box[3]:.2f}"


def run(settings: QuerySettings) -> None:
    """Print the top-k listings of each photo, each with the part of the photo that found it
    (the whole photo, or a box the model's localiser found: fractions of its width and height);
    a bad photo is reported on its own line (stderr, and as ``{"error": ...}`` with --json)
    while the others are answered; then exit 1."""
    from index.searcher import Hit
    from search.per_photo import embed_each
    from search.photo_search import PhotoSearch

    errors: dict[int, str] = {}
    photos: dict[int, bytes] = {}
    for i, uri in enumerate(settings.images):
        try:
            photos[i] = storage.read_bytes(uri)
        except storage.StorageError as e:
            errors[i] = str(e)
    results: dict[int, list[tuple[Hit, list[float]]]] = {}
    with PhotoSearch.open(settings.workdir, cache_dir=settings.cache_dir) as searcher:
        order = sorted(photos)
        embedded = embed_each(searcher, [photos[i] for i in order])
        errors.update({i: e for i, e in zip(order, embedded.errors, strict=True) if e is not None})
        good = embedded.good
        if good:
            found = embedded.search(searcher.searcher.search_vectors, good, settings.k)
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
            rows = [{**asdict(h), "box": box} for h, box in hits]
            print(json.dumps({"image": uri, "index_build": build, "hits": rows}))
            continue
        print(f"{uri}  (index {build})")
        for rank, (h, box) in enumerate(hits, 1):
            where = "whole photo" if box == [0.0, 0.0, 1.0, 1.0] else "box " + _box_text(box)
            print(f"  {rank:>3}. {h.listing_id}  {h.score:.4f}  {h.category or '-'}  ({where})")
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {len(settings.images)} photos could not be searched (listed above)"
        )
