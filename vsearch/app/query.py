"""``vsearch query IMAGE... [--k 20] [--json] --workdir W``: search by photo from the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

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
    photos = [storage.read_bytes(uri) for uri in args.images]
    with PhotoSearch.open(args.workdir, cache_dir=args.cache_dir) as searcher:
        results = searcher.search(photos, args.k)
        build = searcher.manifest.build_id
    for uri, hits in zip(args.images, results, strict=True):
        if args.json:
            print(
                json.dumps({"image": uri, "index_build": build, "hits": [asdict(h) for h in hits]})
            )
            continue
        print(f"{uri}  (index {build})")
        for rank, h in enumerate(hits, 1):
            print(f"  {rank:>3}. {h.listing_id}  {h.score:.4f}  {h.category or '-'}")
    return 0
