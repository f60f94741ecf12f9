"""Index benchmarks: recall@10 vs QPS against exact search, build time, memory, shards, autofaiss.

    python -m benchmarks.index_bench --n 100000            # develop
    nice python -m benchmarks.index_bench --n 1000000      # the figures in BENCHMARKS.md

For each DESIGN.md vector set (``clustered``, ``manifold``): exact search (single-thread single
queries) as the baseline; our build (``factory=auto``, S=1) in a child process (build time, peak
RSS); recall@10 and single-query QPS along the tuned knob; S=8 vs S=1 (recall, batch QPS); and
autofaiss 2.18 in its own virtualenv on the same .npy, its index measured with the same harness.
QPS figures are 1 / median single-query latency (faiss on one thread), so they are comparable
across indexes and robust to a busy machine. Writes BENCHMARKS.md between
``<!-- index:start -->`` and ``<!-- index:end -->`` and benchmarks/plots/index_recall_qps.png.

The parts: ``index_builds`` (cached vectors, builds in child processes), ``index_measure``
(recall, QPS, knob sweeps), ``index_bench_report`` (the section, the plot); this module runs a set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import faiss

from benchmarks import report
from benchmarks.index_bench_report import markdown, plot
from benchmarks.index_builds import ROOT, build_autofaiss, build_ours, cached_vectors
from benchmarks.index_measure import (
    K,
    batch_qps,
    curve_autofaiss,
    curve_ours,
    interpolate_recall,
    median_qps,
    ours_ids,
    recall,
)


def run_set(
    name: str,
    n: int,
    nq: int,
    work: str,
    shards: int,
    with_autofaiss: bool,
    with_hnsw: bool = False,
) -> dict[str, Any]:
    from index.searcher import Searcher

    res: dict[str, Any] = {"set": name, "n": n, "nq": nq}
    emb_dir = os.path.join(work, name, "embeddings")
    os.makedirs(emb_dir, exist_ok=True)
    npy = os.path.join(emb_dir, "db.npy")
    db, q = cached_vectors(name, n, nq, work, npy)
    n = res["n"] = len(db)  # catalog: what the embed benchmark left, whatever --n says
    print(f"[{name}] n={n}", flush=True)
    n_time = 30 if n >= 500_000 else 150  # single queries timed per point
    q_time = q[:n_time]

    flat = faiss.IndexFlatIP(db.shape[1])
    flat.add(db)
    _, truth = flat.search(q, K)
    res["exact_qps"] = median_qps(lambda x: flat.search(x, K), q[: max(10, n_time // 3)])
    flat.reset()  # free the exact index before building
    del db
    print(f"  exact: {res['exact_qps']:.1f} QPS", flush=True)

    one = build_ours(npy, os.path.join(work, name, "ours-s1"), name, factory="auto", shards=1)
    if with_hnsw:  # the memory reference point: what auto's earlier hard-data choice cost
        hn = build_ours(npy, os.path.join(work, name, "hnsw32"), name, factory="HNSW32", shards=1)
        res["hnsw32_build"] = {k: hn[k] for k in ("build_s", "peak_rss_mb", "search_params")}
        print(f"  HNSW32,Flat: {res['hnsw32_build']}", flush=True)
    res["ours"] = one
    print(
        f"  ours: {one['factory']} dim={one['dim']} {one['search_params']} built in {one['build_s']:.0f}s, peak {one['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    if with_hnsw:
        with Searcher.from_manifest_uri(hn["manifest_uri"]) as sh:
            hp = hn["search_params"]
            res["hnsw32_build"]["recall"] = recall(ours_ids(sh, q, hp), truth)
            res["hnsw32_build"]["qps"] = median_qps(lambda x: sh.search_raw(x, K, hp), q_time)
        print(f"  HNSW32,Flat searched: {res['hnsw32_build']}", flush=True)
    with Searcher.from_manifest_uri(one["manifest_uri"]) as s1:
        res["ours_curve"] = curve_ours(s1, q, truth, q_time)
        chosen = one["search_params"]
        point = next(c for c in res["ours_curve"] if c["param"] == chosen)
        res["ours_point"] = point
        res["speedup_vs_exact"] = point["qps"] / res["exact_qps"]
        print(
            f"  ours @ {chosen}: recall {point['recall']:.4f}, {point['qps']:.0f} QPS ({res['speedup_vs_exact']:.0f}x exact)",
            flush=True,
        )
        if shards > 1:
            many = build_ours(
                npy,
                os.path.join(work, name, f"ours-s{shards}"),
                name,
                factory=one["factory"],
                shards=shards,
            )
            own = many["search_params"]
            with (
                Searcher.from_manifest_uri(many["manifest_uri"]) as s8,
                Searcher.from_manifest_uri(many["manifest_uri"], merge_ivf=False) as s8_sep,
            ):
                res["shards"] = {
                    "S": shards,
                    "build_s": many["build_s"],
                    "params": chosen,
                    "recall_1": recall(ours_ids(s1, q, chosen), truth),
                    "recall_S": recall(ours_ids(s8, q, chosen), truth),
                    "batch_qps_1": batch_qps(lambda x: s1.search_raw(x, K, chosen), q),
                    "batch_qps_S": batch_qps(lambda x: s8.search_raw(x, K, chosen), q),
                    "batch_qps_S_separate": batch_qps(lambda x: s8_sep.search_raw(x, K, chosen), q),
                    "own_params": own,
                    "recall_S_own": recall(ours_ids(s8, q, own), truth),
                    "batch_qps_S_own": batch_qps(lambda x: s8.search_raw(x, K, own), q),
                }
            sh = res["shards"]
            print(
                f"  S={shards}: {sh}",
                flush=True,
            )
    if with_autofaiss:
        af = build_autofaiss(emb_dir, os.path.join(work, name, "autofaiss"))
        if af is not None:
            index = faiss.read_index(af["index_path"])
            curve, chosen_pt = curve_autofaiss(
                index, af["index_key"], af["index_param"] or "", q, truth, q_time
            )
            res["autofaiss"] = {
                k: af[k] for k in ("build_s", "peak_rss_mb", "index_key", "index_param")
            }
            res["autofaiss_curve"], res["autofaiss_point"] = curve, chosen_pt
            res["ours_recall_at_autofaiss_qps"] = interpolate_recall(
                res["ours_curve"], chosen_pt["qps"]
            )
            print(
                f"  autofaiss: {af['index_key']} {af['index_param']} recall {chosen_pt['recall']:.4f} at {chosen_pt['qps']:.0f} QPS; built in {af['build_s']:.0f}s, peak {af['peak_rss_mb']:.0f} MB; ours at that QPS: {res['ours_recall_at_autofaiss_qps']}",
                flush=True,
            )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index_bench")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument(
        "--sets",
        default="clustered,manifold",
        help="clustered, manifold (DESIGN.md's recipes, --n vectors) and catalog (the trained "
        "model's real embeddings left by benchmarks.embed_bench, ~112k, queries held out)",
    )
    p.add_argument("--shards", type=int, default=8)
    p.add_argument(
        "--shard-sets", default=None, help="sets that get the S-shard build (default all)"
    )
    p.add_argument("--no-autofaiss", action="store_true")
    p.add_argument("--hnsw", action="store_true", help="also build HNSW32,Flat (peak memory)")
    p.add_argument("--work", default=os.path.join(ROOT, "bench-output", "index"))
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md and the plot")
    args = p.parse_args(argv)
    sharded = set((args.shard_sets or args.sets).split(","))
    meta = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs (shared)",
        "n": args.n,
        "nq": args.nq,
    }
    os.makedirs(args.work, exist_ok=True)
    results: list[dict[str, Any]] = []
    for name in args.sets.split(","):
        shards = args.shards if name in sharded else 1
        results.append(
            run_set(name, args.n, args.nq, args.work, shards, not args.no_autofaiss, args.hnsw)
        )
        # Written after every set: a long run that dies later still leaves its figures.
        with open(os.path.join(args.work, f"results-{args.n}.json"), "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2, default=str)
        if args.write:
            report.write_section("index", markdown(results, meta), stamped=False)
            plot(results, os.path.join(ROOT, "benchmarks", "plots", "index_recall_qps.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
