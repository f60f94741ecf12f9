"""``make bench``: every benchmark in turn; each rewrites its section of BENCHMARKS.md."""

from __future__ import annotations

import importlib
import sys
import time

# (module, its flags): cheapest first, so a short run still refreshes most sections. The index
# figures in BENCHMARKS.md are at N=1M (about half an hour on 2 cores, autofaiss included).
BENCHMARKS: tuple[tuple[str, list[str]], ...] = (
    ("benchmarks.startup_reads", ["--write"]),
    ("benchmarks.publish_gcs", ["--write"]),
    ("benchmarks.embed_bench", []),
    ("benchmarks.serve_bench", ["--write"]),
    ("benchmarks.model_quality", []),
    ("benchmarks.model_quality", ["--style", "bazaar"]),
    ("benchmarks.model_quality", ["--style", "phone", "--listings", "600"]),
    # Buyer photo -> listing on each model above: whole frame, localiser, oracle crop, histogram.
    ("benchmarks.buyer_photos", ["--style", "phone", "--listings", "600", "--write"]),
    ("benchmarks.buyer_photos", ["--style", "generated", "--listings", "2000", "--write"]),
    ("benchmarks.buyer_photos", ["--style", "bazaar", "--listings", "1000", "--write"]),
    ("benchmarks.index_bench", ["--n", "1000000", "--write"]),
    # Ours against hnswlib and faiss HNSW on the same cached 1M vectors (~1 h on 2 cores).
    ("benchmarks.index_peers", ["--n", "1000000", "--write"]),
    # The trained model's real embeddings that embed_bench left (~112k); printed and kept in
    # bench-output/index/results-100000.json, summarised by hand in BENCHMARKS.md.
    ("benchmarks.index_bench", ["--sets", "catalog", "--shard-sets", "catalog", "--hnsw"]),
    # 10M x 256 on disk (~30 GB of disk, ~15 minutes on 2 cores): last, the longest.
    ("benchmarks.index_scale", ["--n", "10000000", "--write"]),
)


def main() -> int:
    failed = []
    for name, flags in BENCHMARKS:
        print(f"=== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(name).main(list(flags))
        except Exception as e:  # keep going: one broken benchmark must not hide the others
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
        print(f"=== {name} took {time.perf_counter() - t0:.0f}s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
