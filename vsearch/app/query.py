"""``vsearch query IMAGE... [--k 20] [--json] --workdir W``: search by photo from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from index.searcher import Hit
from vsearch.app.per_photo import embed_each
from vsearch.app.photo_search import PhotoSearch
from vsearch.core import storage


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vsearch query", description="top-k listings for photos")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file or URI (JPEG, PNG, ...)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--k", type=int, default=20, help="listings per photo")
    p.add_argument("--json", action="store_true", help="one JSON object per photo")
    p.add_argument("--cache-dir", help="local copy of gs:// shards (default: $TMPDIR)")
    args = p.parse_args(argv)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    # One bad photo (unreadable, not an image) is reported on its own; the others are answered.
    errors: dict[int, str] = {}
    photos: dict[int, bytes] = {}
    for i, uri in enumerate(args.images):
        try:
            photos[i] = storage.read_bytes(uri)
        except storage.StorageError as e:
            errors[i] = str(e)
    results: dict[int, list[Hit]] = {}
    with PhotoSearch.open(args.workdir, cache_dir=args.cache_dir) as searcher:
        order = sorted(photos)
        vectors, bad = embed_each(searcher, [photos[i] for i in order])
        errors.update({i: e for i, e in zip(order, bad, strict=True) if e is not None})
        good = [j for j, i in enumerate(order) if i not in errors]
        if good:
            found = searcher.searcher.search_vectors(vectors[good], args.k)
            results = {order[j]: hits for j, hits in zip(good, found, strict=True)}
        build = searcher.manifest.build_id
    for i, uri in enumerate(args.images):
        if i in errors:
            if args.json:
                print(json.dumps({"image": uri, "index_build": build, "error": errors[i]}))
            print(f"vsearch query: {uri}: error: {errors[i]}", file=sys.stderr)
            continue
        hits = results[i]
        if args.json:
            print(
                json.dumps({"image": uri, "index_build": build, "hits": [asdict(h) for h in hits]})
            )
            continue
        print(f"{uri}  (index {build})")
        for rank, h in enumerate(hits, 1):
            print(f"  {rank:>3}. {h.listing_id}  {h.score:.4f}  {h.category or '-'}")
    return 1 if errors else 0
