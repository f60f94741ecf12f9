"""What plain faiss does on the index benchmark's cached vectors: the floor under our Searcher.

    python -m benchmarks.index_floor --set clustered --factory IVF4096,Flat --nprobe 1,2,4
    python -m benchmarks.index_floor --set manifold --factory IVF4096,PQ64x4fs,RFlat \
        --nprobe 256,311,384 --k-factor 8
    python -m benchmarks.index_floor --set clustered --searcher bench-output/index/clustered/ours-s1/manifest.json --rounds 5

Reads ``bench-output/index/<set>/embeddings/db.npy`` (written by ``benchmarks.index_bench``),
trains the factory on a seeded sample, adds everything, and prints recall@10 against exact search
and single-query QPS (1 / median latency of 100 queries, one faiss thread: the same measure as
index_bench). A figure far above index_bench's for the same layout and knob is time spent in our
Searcher, not in faiss.

``--searcher MANIFEST`` instead times exact search, the built index's own faiss object and our
``Searcher`` over it, interleaved in ``--rounds`` rounds: on a shared machine a single run's
QPS moves by 20-30%, the median of interleaved rounds and its ratio to exact much less.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import faiss
import numpy as np

from benchmarks import vectors
from benchmarks.index_builds import ROOT
from benchmarks.index_measure import K, median_qps, ours_ids, recall
from index.tuning import faiss_search_parameters, search_parameters


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.index_floor")
    ap.add_argument("--set", required=True, choices=sorted(vectors.SETS))
    ap.add_argument("--factory", help="a faiss index_factory string (required without --searcher)")
    ap.add_argument("--nprobe", default="1,2,4", help="comma-separated nprobe values")
    ap.add_argument("--k-factor", type=int, default=0, help="re-rank factor (RFlat layouts)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--train", type=int, default=160_000, help="training sample size")
    ap.add_argument("--searcher", default=None, help="a built index's manifest.json: time it")
    ap.add_argument("--rounds", type=int, default=5, help="with --searcher: interleaved rounds")
    args = ap.parse_args(argv)
    if args.searcher:
        return rounds(args.set, args.searcher, args.rounds, args.queries)
    if not args.factory:
        ap.error("--factory is required (or --searcher MANIFEST)")

    db, queries, exact, truth = cached_set(args.set, args.queries)
    del exact
    sample = training_sample(db, args.train)
    start = time.perf_counter()
    index = faiss.index_factory(db.shape[1], args.factory, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(db)
    print(f"{args.set} N={len(db)} {args.factory}: built in {time.perf_counter() - start:.0f} s")
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        knobs = {"nprobe": nprobe, **({"k_factor": args.k_factor} if args.k_factor else {})}
        params = faiss_search_parameters(knobs)
        _, found = index.search(queries, K, params=params)
        qps = median_qps(lambda x, p=params: index.search(x, K, params=p), queries[:100])
        print(
            f"  nprobe {nprobe} k_factor {args.k_factor or '-'}: recall@10 "
            f"{recall(found, truth):.4f}, {qps:.0f} QPS (1 thread)"
        )
    return 0


def cached_set(set_name: str, n_queries: int) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray]:
    """(database, queries, exact index, exact top-k ids) of a set index_bench has cached."""
    npy = os.path.join(ROOT, "bench-output", "index", set_name, "embeddings", "db.npy")
    if not os.path.exists(npy):
        raise SystemExit(f"{npy} not found: run benchmarks.index_bench --sets {set_name} first")
    db = np.ascontiguousarray(np.load(npy, mmap_mode="r"))
    queries = vectors.SETS[set_name](n_queries, vectors.DATABASE_SEED, vectors.QUERY_SEED)
    exact = faiss.IndexFlatIP(db.shape[1])
    exact.add(db)
    _, truth = exact.search(queries, K)
    return db, queries, exact, truth


def training_sample(db: np.ndarray, size: int) -> np.ndarray:
    """The seeded training sample every layout of these scripts is trained on."""
    return db[np.random.default_rng(0).choice(len(db), min(size, len(db)), replace=False)]


def rounds(set_name: str, manifest: str, n_rounds: int, n_queries: int) -> int:
    """Exact, plain faiss and our Searcher on the same queries, interleaved; medians and ratios."""
    from index.refine import searchable
    from index.searcher import Searcher, faiss_indexes, refine_stores

    _, queries, exact, truth = cached_set(set_name, n_queries)
    searcher = Searcher.from_manifest_uri(manifest)
    params = searcher.manifest.search_params
    found = ours_ids(searcher, queries, params)  # db rows, through the id maps (any shards)
    print(f"{set_name} {searcher.manifest.factory} {params}: recall@10 {recall(found, truth):.4f}")
    timed = queries[:100]
    runs: dict[str, Any] = {
        "exact": (lambda x: exact.search(x, K), timed[:20]),
        "Searcher": (lambda x: searcher.search_raw(x, K), timed),
    }
    (_, index), *more = faiss_indexes(searcher)
    stores = refine_stores(searcher)
    if not more and stores is None:  # one plain faiss index answers alone
        sp = search_parameters(params)
        runs["faiss"] = (lambda x: index.search(x, K, params=sp), timed)
    elif not more and stores is not None and stores.offsets is None and len(stores.flats) == 1:
        # One refined shard: its tagged ids are its row numbers, so faiss' own IndexRefine over
        # the same IVF part and store is the plain-faiss floor of the Searcher's re-ranking.
        plain = searchable(index, stores.flats[0])
        rsp = faiss_search_parameters(params)
        runs["faiss"] = (lambda x: plain.search(x, K, params=rsp), timed)
    qps: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(n_rounds):
        for name, (search, qs) in runs.items():
            qps[name].append(median_qps(search, qs))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in qps.items()))
    med = {k: float(np.median(v)) for k, v in qps.items()}
    print(
        f"  median QPS of {n_rounds} rounds: "
        + ", ".join(f"{n} {v:.1f} ({v / med['exact']:.0f}x exact)" for n, v in med.items())
    )
    # Each round's ratio is taken minutes apart at most, so the machine's drift between rounds
    # cancels out of it; the ratio of the medians above mixes rounds.
    ratios = {
        n: float(np.median(np.array(v) / np.array(qps["exact"])))
        for n, v in qps.items()
        if n != "exact"
    }
    print(
        f"  median of the {n_rounds} rounds' ratios to exact: "
        + ", ".join(f"{n} {r:.0f}x" for n, r in ratios.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
