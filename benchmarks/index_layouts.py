"""faiss layouts side by side on the index benchmark's cached vectors, timed in interleaved rounds.

    python -m benchmarks.index_layouts --set clustered "IVF2048,Flat:1" "IVF2048_HNSW32,Flat:1,1/0/8"
    python -m benchmarks.index_layouts --set manifold "IVF2048,PQ64x4fs,RFlat:192/8"

Each argument is ``FACTORY:SETTINGS``; SETTINGS is a comma-separated list of
``nprobe[/k_factor[/quantizer_efSearch]]`` (0 = faiss' default). Every layout is trained on the
same seeded sample of ``bench-output/index/<set>/embeddings/db.npy`` (written by
``benchmarks.index_bench``) and searched with faiss alone (refined layouts: faiss' own refine).
Single-query QPS (one faiss thread) is measured in ``--rounds`` rounds that visit every setting
and exact search in turn; medians and ratios to exact are printed. What ``index_floor`` does for
one layout, for the question "which layout", on a machine whose speed drifts between runs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import faiss
import numpy as np

from benchmarks import vectors
from benchmarks.index_floor import cached_set, training_sample
from benchmarks.index_measure import K, median_qps, recall
from index.tuning import faiss_search_parameters


def parameters(spec: str) -> Any:
    """``nprobe[/k_factor[/quantizer_efSearch]]`` (0 = faiss' default) -> faiss search parameters."""
    names = ("nprobe", "k_factor", "quantizer_efSearch")
    return faiss_search_parameters(
        {n: int(v) for n, v in zip(names, spec.split("/"), strict=False) if int(v)}
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.index_layouts")
    ap.add_argument("--set", required=True, choices=sorted(vectors.SETS))
    ap.add_argument("layouts", nargs="+", help="FACTORY:nprobe[/k_factor[/efSearch]],...")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--train", type=int, default=160_000, help="training sample size")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    db, queries, exact, truth = cached_set(args.set, args.queries)
    sample = training_sample(db, args.train)

    runs: list[tuple[str, Any, Any, float]] = []
    for layout in args.layouts:
        factory, _, settings = layout.partition(":")
        start = time.perf_counter()
        index = faiss.index_factory(db.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add(db)
        print(f"{factory}: built in {time.perf_counter() - start:.0f} s", flush=True)
        for spec in (settings or "1").split(","):
            params = parameters(spec)
            _, found = index.search(queries, K, params=params)
            runs.append((f"{factory} {spec}", index, params, recall(found, truth)))

    timed = queries[:100]
    exact_qps: list[float] = []
    qps: dict[str, list[float]] = {name: [] for name, *_ in runs}
    for _ in range(args.rounds):
        exact_qps.append(median_qps(lambda x: exact.search(x, K), timed[:10]))
        for name, index, params, _ in runs:

            def one(x: np.ndarray, i: Any = index, p: Any = params) -> Any:
                return i.search(x, K, params=p)

            qps[name].append(median_qps(one, timed))
    e = float(np.median(exact_qps))
    print(f"exact: {e:.1f} QPS (median of {args.rounds} rounds)")
    for name, _, _, rec in runs:
        m = float(np.median(qps[name]))
        spread = ", ".join(f"{v:.0f}" for v in qps[name])
        print(f"{name:45s} recall@10 {rec:.4f}  {m:.0f} QPS ({m / e:.0f}x exact)  rounds {spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
