"""Our index against the fastest graph libraries, same vectors, same run, one search thread.

    python -m benchmarks.index_peers --n 100000 --grid 16:100,32:100,32:200   # develop, pick M
    nice -n 10 python -m benchmarks.index_peers --n 1000000 --write          # BENCHMARKS.md

For each DESIGN.md set (``manifold``, ``clustered``), on ``benchmarks.index_bench``'s cached
vectors: our build (``factory=auto``, S=1, in a fresh process), hnswlib and faiss
``IndexHNSWFlat`` (inner product; one build per ``M:efConstruction`` of ``--grid``, each in a
fresh process: build seconds, peak RSS, bytes on disk). Every method's search knob (our nprobe
with the build's k_factor / quantizer walk beside it, the graphs' efSearch) is then set to the
smallest value whose recall@10 on the benchmark's queries reaches 0.95, the same oracle for all;
ours is also timed at the parameters its build tuned on its own held-out queries. Timing is one
search thread, in ``--rounds`` interleaved rounds (every method in turn, so the machine's drift
hits them alike): single queries (QPS = 1 / median latency) and the whole query batch in one
call (QPS = queries / seconds); the figures are medians over rounds. Builds use every core.
Writes BENCHMARKS.md between ``<!-- index-peers:start -->`` and ``<!-- index-peers:end -->``
and benchmarks/plots/index_peers.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from benchmarks import report
from benchmarks.index_builds import ROOT, build_ours, cached_vectors, peak_rss_mb
from benchmarks.index_measure import TARGET, K, ours_ids, recall
from benchmarks.index_peers_report import markdown, plot

SECTION = "index-peers"
PEERS = ("hnswlib", "faiss-hnsw")
# M:efConstruction per graph build. One build per library and set is what a 1M run affords on
# a shared 2-core machine (a 1M x 256 graph takes ~10 min to build there); efSearch, the knob
# that decides QPS at a recall, is tuned per index. Sweep M and efConstruction with --grid.
DEFAULT_GRID = "16:100"


@dataclass(frozen=True)
class Method:
    """One built index, ready to search: ``search(x, knob)`` -> ids [n, K] on one thread."""

    name: str  # "ours", "hnswlib M32 efC200", ...
    knob: str  # "nprobe" / "efSearch"
    search: Callable[[np.ndarray, int], np.ndarray]
    build: dict[str, Any]  # build_s, peak_rss_mb, bytes (on disk), settings
    lo: int  # the knob's range for the search of the 0.95 point
    hi: int


# ------------------------------------------------------------------ building (child processes)


def build_peer_child(lib: str, npy: str, out: str, m: int, ef_c: int, results: Any) -> None:
    db = np.load(npy, mmap_mode="r")
    n, dim = db.shape
    threads = os.cpu_count() or 1
    t = time.perf_counter()
    if lib == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=n, ef_construction=ef_c, M=m, random_seed=100)
        for s in range(0, n, 65536):
            chunk = np.ascontiguousarray(db[s : s + 65536])
            index.add_items(chunk, np.arange(s, s + len(chunk)), num_threads=threads)
        build_s = time.perf_counter() - t
        index.save_index(out)
    else:
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_c
        for s in range(0, n, 65536):
            index.add(np.ascontiguousarray(db[s : s + 65536]))
        build_s = time.perf_counter() - t
        faiss.write_index(index, out)
    results.put({"build_s": build_s, "peak_rss_mb": peak_rss_mb(), "bytes": os.path.getsize(out)})


def build_peer(lib: str, npy: str, out: str, m: int, ef_c: int) -> dict[str, Any]:
    """Build in a fresh spawned process: its own build time and peak RSS (VmHWM)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=build_peer_child, args=(lib, npy, out, m, ef_c, q))
    p.start()
    try:
        while True:
            try:
                result: dict[str, Any] = q.get(timeout=5)
                return {**result, "M": m, "efConstruction": ef_c}
            except queue.Empty:
                if not p.is_alive():
                    raise RuntimeError(f"the {lib} build {out} died ({p.exitcode})") from None
    finally:
        p.join()


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# ------------------------------------------------------------------ the methods, loaded


def open_peer(lib: str, path: str, dim: int, build: dict[str, Any]) -> Method:
    name = f"{lib} M{build['M']} efC{build['efConstruction']}"
    if lib == "hnswlib":
        import hnswlib

        h = hnswlib.Index(space="ip", dim=dim)
        h.load_index(path)
        h.set_num_threads(1)

        def search_h(x: np.ndarray, ef: int) -> np.ndarray:
            h.set_ef(max(ef, K))
            ids, _ = h.knn_query(x, k=K, num_threads=1)
            return np.asarray(ids, dtype=np.int64)

        return Method(name, "efSearch", search_h, build, K, 4096)
    f = faiss.read_index(path)

    def search_f(x: np.ndarray, ef: int) -> np.ndarray:
        sp = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
        return np.asarray(f.search(x, K, params=sp)[1])

    return Method(name, "efSearch", search_f, build, K, 4096)


def open_ours(searcher: Any, build: dict[str, Any]) -> tuple[Method, dict[str, int]]:
    """Our Searcher with its main knob free (the settings beside it as built)."""
    params = dict(build["search_params"])
    beside = {k: v for k, v in params.items() if k in ("k_factor", "quantizer_efSearch")}
    free = [(k, v) for k, v in params.items() if k not in beside]
    if not free:  # a small set's exact (Flat) index: nothing to tune
        return Method(
            f"ours `{build['factory']}`",
            "-",
            lambda x, _: searcher.search_raw(x, K)[2],
            build,
            0,
            0,
        ), {"-": 0}
    ((knob, chosen),) = free

    def search(x: np.ndarray, v: int) -> np.ndarray:
        p = {knob: v, **beside}
        return searcher.search_raw(x, K, None if p == params else p)[2]

    hi = 4 * chosen if knob == "nprobe" else 4096
    return Method(f"ours `{build['factory']}`", knob, search, build, 1, hi), params


# ------------------------------------------------------------------ measuring


def one_thread(fn: Callable[[], Any]) -> Any:
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return fn()
    finally:
        faiss.omp_set_num_threads(prev)


def lowest_reaching(recall_at: Callable[[int], float], lo: int, hi: int) -> tuple[int, float]:
    """The smallest knob value in [lo, hi] whose recall reaches TARGET: doubling from lo, then
    bisection (recall grows with the knob, cost too: the dear end is tried only when needed);
    hi's if none does."""
    prev, v = lo - 1, lo
    while True:
        r = recall_at(v)
        if r >= TARGET or v == hi:
            break
        prev, v = v, min(hi, 2 * v)
    if r < TARGET:
        return v, r
    best, lo, hi = (v, r), prev + 1, v
    while lo < hi:
        mid = (lo + hi) // 2
        r = recall_at(mid)
        if r >= TARGET:
            hi, best = mid, (mid, r)
        else:
            lo = mid + 1
    return best


def timed(
    search: Callable[[np.ndarray], Any], q_single: np.ndarray, q_batch: np.ndarray
) -> tuple[float, float]:
    """(single-query QPS = 1 / median latency, batch QPS = queries / s of one call)."""
    times = []
    for row in q_single:
        t = time.perf_counter()
        search(row[None, :])
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    search(q_batch)
    return float(1 / np.median(times)), len(q_batch) / (time.perf_counter() - t)


def measure(
    methods: list[tuple[Method, int]], q: np.ndarray, n_single: int, rounds: int
) -> list[dict[str, float]]:
    """Interleaved rounds over (method, knob value): medians of single and batch QPS."""
    singles: list[list[float]] = [[] for _ in methods]
    batches: list[list[float]] = [[] for _ in methods]

    def run() -> None:
        for m, v in methods:  # warm-up: page every index in
            timed(lambda x, m=m, v=v: m.search(x, v), q[:n_single], q)
        for r in range(rounds):
            order = list(range(len(methods)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                m, v = methods[i]
                s, b = timed(lambda x, m=m, v=v: m.search(x, v), q[:n_single], q)
                singles[i].append(s)
                batches[i].append(b)

    one_thread(run)
    return [
        {"qps": float(np.median(s)), "batch_qps": float(np.median(b)), "rounds": len(s)}
        for s, b in zip(singles, batches, strict=True)
    ]


def curve(
    m: Method, at: int, q: np.ndarray, truth: np.ndarray, n_single: int
) -> list[dict[str, float]]:
    """Recall and single-query QPS at a few knob values around the 0.95 point (the plot)."""
    out = []
    for f in (0.5, 0.7, 1.0, 1.5, 2.0, 3.0):
        v = max(m.lo, min(m.hi, round(at * f)))
        if out and out[-1]["knob"] == v:
            continue
        r = recall(m.search(q, v), truth)
        s, _ = one_thread(lambda v=v: timed(lambda x: m.search(x, v), q[:n_single], q[:1]))
        out.append({"knob": v, "recall": r, "qps": s})
    return out


def built(record: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``build`` and keep its figures beside the index (``--reuse`` reads them back)."""
    result = build()
    with open(record, "w") as f:
        json.dump(result, f, indent=2, default=str)
    return result


def reused(record: str, reuse: bool) -> dict[str, Any] | None:
    """An earlier run's build of the same index and its figures, with ``--reuse``."""
    if not (reuse and os.path.exists(record)):
        return None
    with open(record) as f:
        result: dict[str, Any] = json.load(f)
    print(f"  reusing the build recorded in {record}", flush=True)
    return result


def run_set(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from index.searcher import Searcher

    work = os.path.join(args.work, name)
    npy = os.path.join(work, "embeddings", "db.npy")
    os.makedirs(os.path.dirname(npy), exist_ok=True)
    db, q = cached_vectors(name, args.n, args.nq, args.work, npy)
    n, dim = db.shape
    exact = faiss.IndexFlatIP(dim)
    exact.add(db)
    _, truth = exact.search(q, K)
    exact.reset()
    del db
    print(f"[{name}] n={n:,}", flush=True)

    builds: dict[str, dict[str, Any]] = {}
    ours_dir = os.path.join(work, "peers-ours")
    ours = reused(ours_dir + ".build.json", args.reuse) or built(
        ours_dir + ".build.json",
        lambda: build_ours(npy, ours_dir, name, factory="auto", shards=1),
    )
    ours["bytes"] = dir_bytes(ours_dir)
    builds["ours"] = ours
    print(f"  ours: {ours['factory']} {ours['search_params']} {ours['build_s']:.0f}s", flush=True)
    grid = [tuple(int(x) for x in g.split(":")) for g in args.grid.split(",")]
    for lib in args.peers.split(","):
        for links, ef_c in grid:
            out = os.path.join(work, f"peers-{lib}-M{links}-efc{ef_c}.bin")
            b = reused(out + ".build.json", args.reuse) or built(
                out + ".build.json", functools.partial(build_peer, lib, npy, out, links, ef_c)
            )
            builds[f"{lib}:{links}:{ef_c}"] = {**b, "path": out, "lib": lib}
            print(
                f"  {lib} M{links} efC{ef_c}: {b['build_s']:.0f}s {b['peak_rss_mb']:.0f} MB",
                flush=True,
            )

    with Searcher.from_manifest_uri(ours["manifest_uri"]) as searcher:
        mine, tuned = open_ours(searcher, ours)
        methods = [mine] + [
            open_peer(b["lib"], b["path"], dim, b) for k, b in builds.items() if k != "ours"
        ]
        points: list[tuple[Method, int]] = []
        rows: list[dict[str, Any]] = []
        knob_name = mine.knob
        r_tuned = recall(ours_ids(searcher, q, tuned if mine.lo else {}), truth)
        if abs(r_tuned - recall(mine.search(q, tuned[mine.knob]), truth)) > 1e-9:
            raise RuntimeError("our Searcher's faiss ids are not database rows")
        points.append((mine, tuned[knob_name]))
        rows.append(
            {"method": f"{mine.name} as built {tuned}", "knob": tuned[knob_name], "recall": r_tuned}
        )
        for m in methods:
            v, r = lowest_reaching(lambda v, m=m: recall(m.search(q, v), truth), m.lo, m.hi)
            points.append((m, v))
            rows.append({"method": m.name, "knob": v, "recall": r})
            print(f"  {m.name}: {m.knob} {v} -> recall {r:.4f}", flush=True)
        timings = measure(points, q, args.single, args.rounds)
        for row, t, (m, _) in zip(rows, timings, points, strict=True):
            row.update(t, knob_name=m.knob, build=m.build)
            print(f"  {row['method']} @ {row['knob']}: {t}", flush=True)
        curves = {m.name: curve(m, v, q, truth, args.single) for m, v in points[1:]}
    return {"set": name, "n": n, "nq": len(q), "rows": rows, "curves": curves}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index_peers")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--sets", default="manifold,clustered")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--grid", default=DEFAULT_GRID, help="M:efConstruction,... per graph build")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--single", type=int, default=200, help="single queries timed per round")
    p.add_argument("--work", default=os.path.join(ROOT, "bench-output", "index"))
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md and the plot")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="search the builds an earlier run left (and its figures)",
    )
    p.add_argument(
        "--from-json",
        help="re-render runs' peers-N-SETS.json, comma-separated (BENCHMARKS.md, plot)",
    )
    args = p.parse_args(argv)
    if args.from_json:
        done = []
        for path in args.from_json.split(","):
            with open(path) as f:
                done += json.load(f)
        report.write_section(SECTION, markdown(done, args))
        plot(done, os.path.join(ROOT, "benchmarks", "plots", "index_peers.png"))
        return 0
    results = []
    for name in args.sets.split(","):
        results.append(run_set(name, args))
        # Written after every set: a long run that dies later still leaves its figures.
        tag = args.sets.replace(",", "-")
        with open(os.path.join(args.work, f"peers-{args.n}-{tag}.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
        if args.write:
            report.write_section(SECTION, markdown(results, args))
            plot(results, os.path.join(ROOT, "benchmarks", "plots", "index_peers.png"))
    print(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
