"""Run autofaiss on a .npy of vectors and report its choice, build time and peak memory.

Runs INSIDE .venv-autofaiss (benchmarks/autofaiss_venv.sh): autofaiss needs numpy<2, the main
environment numpy>=2, and the main environment never imports autofaiss. index_bench (through
index_builds.build_autofaiss) calls this as a subprocess on the same vectors our index is built
from, then measures the index autofaiss wrote with the same search harness as ours.

    .venv-autofaiss/bin/python benchmarks/autofaiss_peer.py --embeddings DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--embeddings", required=True, help="folder holding the .npy file(s)")
    p.add_argument("--out", required=True, help="folder for knn.index, infos and result.json")
    p.add_argument("--max-index-memory-usage", default="16G")
    p.add_argument("--current-memory-available", default="16G")
    p.add_argument("--max-index-query-time-ms", type=float, default=10.0)
    args = p.parse_args(argv)

    from autofaiss import build_index  # only ever imported in its own virtualenv

    os.makedirs(args.out, exist_ok=True)
    index_path = os.path.join(args.out, "knn.index")
    infos_path = os.path.join(args.out, "infos.json")
    t = time.perf_counter()
    _, infos = build_index(
        embeddings=args.embeddings,
        index_path=index_path,
        index_infos_path=infos_path,
        metric_type="ip",
        max_index_memory_usage=args.max_index_memory_usage,
        current_memory_available=args.current_memory_available,
        max_index_query_time_ms=args.max_index_query_time_ms,
        save_on_disk=True,
    )
    build_s = time.perf_counter() - t
    import faiss

    with open(infos_path) as f:
        saved = json.load(f)
    result = {
        "build_s": build_s,
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent's fork.
        "peak_rss_mb": _vm_hwm_mb(),
        "index_path": index_path,
        "index_key": saved.get("index_key"),
        "index_param": saved.get("index_param"),
        "infos": saved,
        "faiss_version": faiss.__version__,
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(
        json.dumps({k: result[k] for k in ("build_s", "peak_rss_mb", "index_key", "index_param")})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
