"""``benchmarks.index_peers``' results as a BENCHMARKS.md section and a recall-vs-QPS plot."""

from __future__ import annotations

import argparse
from typing import Any

import faiss

from benchmarks.index_bench_report import curve, recall_qps_plot
from benchmarks.index_measure import (
    TARGET,  # every method is compared at it (index_peers tunes to it)
)


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "## Index against hnswlib and faiss HNSW (`benchmarks/index_peers.py`)",
        "",
        f"`python -m benchmarks.index_peers --n {args.n} --grid {args.grid} --rounds {args.rounds}`: "
        f"faiss {faiss.__version__}, hnswlib {_hnswlib_version()}, {args.nq} queries (DESIGN.md "
        "recipes, another seed), recall@10 against exact inner-product search. Every method's "
        f"knob is the smallest value whose recall on these queries reaches {TARGET} (ours also "
        "at the parameters its build tuned on its own held-out queries). One search thread; "
        f"single QPS = 1 / median latency of {args.single} single queries, batch QPS = all "
        f"queries in one call; medians of {args.rounds} interleaved rounds. Builds use every core "
        "(ours: sampling, training, adding, ground truth, tuning and validation; the graphs: "
        "adding alone). Peak MB: the build process's VmHWM (includes the memory-mapped vectors "
        "it read). Bytes: the index on disk (ours: the whole build folder, id maps included).",
        "",
        "| set | method | knob | recall@10 | single QPS | vs ours | batch QPS (1 thread) "
        "| vs ours | build s | peak MB | bytes / vector |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        ref = res["rows"][1]  # ours at the oracle knob
        for row in res["rows"]:
            b = row["build"]
            lines.append(
                f"| {res['set']} | {row['method']} | {row['knob_name']} {row['knob']} | "
                f"{row['recall']:.4f} | {row['qps']:,.0f} | {row['qps'] / ref['qps']:.2f}x | "
                f"{row['batch_qps']:,.0f} | {row['batch_qps'] / ref['batch_qps']:.2f}x | "
                f"{b['build_s']:.0f} | {_mb(b.get('peak_rss_mb'))} | {b['bytes'] / res['n']:,.0f} |"
            )
    lines += [
        "",
        "Ours against the fastest peer, both at recall@10 >= 0.95 (target: ratio >= 1):",
        "",
    ]
    for res in results:
        ours, peers = res["rows"][1], [r for r in res["rows"][2:] if r["recall"] >= TARGET]
        if not peers:
            lines.append(f"- {res['set']}: no peer reached {TARGET}")
            continue
        for kind in ("qps", "batch_qps"):
            best = max(peers, key=lambda r: r[kind])
            ratio = ours[kind] / best[kind]
            lines.append(
                f"- {res['set']}, {'single' if kind == 'qps' else 'batch'} QPS: ours "
                f"{ours[kind]:,.0f} vs {best['method']} {best[kind]:,.0f}: **{ratio:.2f}x** "
                f"({'met' if ratio >= 1 else 'NOT met'})"
            )
    lines += ["", "![recall vs QPS](benchmarks/plots/index_peers.png)", ""]
    return "\n".join(lines)


def _mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _hnswlib_version() -> str:
    from importlib.metadata import version

    return version("hnswlib")


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Each method's recall and single-query QPS around its 0.95 point."""

    def draw(ax: Any, res: dict[str, Any]) -> None:
        for name, points in res["curves"].items():
            curve(ax, points, "o-", name)

    recall_qps_plot(results, draw, "single queries / s (one thread)", path)
