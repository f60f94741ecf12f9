"""What plain faiss does on the index benchmark's cached vectors: the floor under our Searcher.

    python -m benchmarks.index_floor --set clustered --factory IVF4096,Flat --nprobe 1,2,4
    python -m benchmarks.index_floor --set manifold --factory IVF4096,PQ64x4fs,RFlat \
        --nprobe 256,311,384 --k-factor 8

Reads ``bench-output/index/<set>/embeddings/db.npy`` (written by ``benchmarks.index_bench``),
trains the factory on a seeded sample, adds everything, and prints recall@10 against exact search
and single-query QPS (1 / median latency of 100 queries, one faiss thread: the same measure as
index_bench). A figure far above index_bench's for the same layout and knob is time spent in our
Searcher, not in faiss.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

from benchmarks import vectors
from benchmarks.index_bench import ROOT, K, median_qps, recall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.index_floor")
    ap.add_argument("--set", required=True, choices=sorted(vectors.SETS))
    ap.add_argument("--factory", required=True, help="a faiss index_factory string")
    ap.add_argument("--nprobe", default="1,2,4", help="comma-separated nprobe values")
    ap.add_argument("--k-factor", type=int, default=0, help="re-rank factor (RFlat layouts)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--train", type=int, default=160_000, help="training sample size")
    args = ap.parse_args(argv)

    npy = os.path.join(ROOT, "bench-output", "index", args.set, "embeddings", "db.npy")
    if not os.path.exists(npy):
        raise SystemExit(f"{npy} not found: run benchmarks.index_bench --sets {args.set} first")
    db = np.ascontiguousarray(np.load(npy, mmap_mode="r"))
    queries = vectors.SETS[args.set](args.queries, vectors.DATABASE_SEED, vectors.QUERY_SEED)
    exact = faiss.IndexFlatIP(db.shape[1])
    exact.add(db)
    _, truth = exact.search(queries, K)
    del exact
    sample = db[np.random.default_rng(0).choice(len(db), min(args.train, len(db)), replace=False)]
    start = time.perf_counter()
    index = faiss.index_factory(db.shape[1], args.factory, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(db)
    print(f"{args.set} N={len(db)} {args.factory}: built in {time.perf_counter() - start:.0f} s")
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        params: faiss.SearchParameters = faiss.SearchParametersIVF(nprobe=nprobe)
        if args.k_factor:
            params = faiss.IndexRefineSearchParameters(
                k_factor=args.k_factor, base_index_params=params
            )
        _, found = index.search(queries, K, params=params)
        qps = median_qps(lambda x, p=params: index.search(x, K, params=p), queries[:100])
        print(
            f"  nprobe {nprobe} k_factor {args.k_factor or '-'}: recall@10 "
            f"{recall(found, truth):.4f}, {qps:.0f} QPS (1 thread)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
