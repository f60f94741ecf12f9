"""``benchmarks.index_bench``' results as its BENCHMARKS.md section (``index``) and the recall-vs-QPS
plot; ``recall_qps_plot`` draws the other index benchmarks' plots too."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import faiss

from benchmarks.index_measure import TARGET


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "## Index (faiss): recall@10 vs exact, QPS, build, memory, shards, autofaiss",
        "",
        f"Measured {meta['date']} on {meta['machine']}, faiss {faiss.__version__}, N={meta['n']:,} vectors "
        f"of D=256 (DESIGN.md recipes), {meta['nq']} queries drawn with another seed. QPS = 1 / median "
        "single-query latency on one faiss thread (batch QPS: all queries in one call, all threads). "
        "Recall@10 is against exact inner-product search. Our index: `build-index --factory auto` "
        "(S=1), knob tuned to recall@10 >= 0.95 on held-out queries; build time and peak RSS of a "
        "fresh process (includes sampling, training, adding, exact ground truth, tuning, validation). "
        "autofaiss 2.18 ran in `.venv-autofaiss` on the same .npy with its defaults "
        "(max_index_query_time_ms=10) and the same 8G index memory budget as ours, and its index "
        "was measured with the same harness. "
        f"Shared 2-core machine: treat absolute figures as indicative, ratios as the result.",
        "",
        "| set | exact QPS | our index | recall@10 | QPS | x exact | build s | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, p = r["ours"], r["ours_point"]
        lines.append(
            f"| {r['set']} | {r['exact_qps']:.1f} | `{o['factory']}` dim {o['dim']} {o['search_params']} | "
            f"{p['recall']:.4f} | {p['qps']:.0f} | {r['speedup_vs_exact']:.0f}x | {o['build_s']:.0f} | {o['peak_rss_mb']:.0f} |"
        )
    hn = [r for r in results if r.get("hnsw32_build")]
    if hn:
        lines += [
            "",
            "| set | HNSW32,Flat (tuned by our build) | recall@10 | QPS | build s | peak MB "
            "| our peak MB (ratio) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in hn:
            h, o = r["hnsw32_build"], r["ours"]
            lines.append(
                f"| {r['set']} | {h['search_params']} | {_f(h.get('recall'), '.4f')} | "
                f"{_f(h.get('qps'), '.0f')} | {h['build_s']:.0f} | {h['peak_rss_mb']:.0f} | "
                f"{o['peak_rss_mb']:.0f} ({o['peak_rss_mb'] / h['peak_rss_mb']:.2f}x) |"
            )
    lines += [
        "",
        "Shards: the same data built with S shards, searched at S=1's tuned parameters (merged: "
        "IVF shards stacked into one in-memory index at load, the Searcher's default; separate: "
        "every shard memory-mapped and searched on its own, then merged), and at the S-shard "
        "build's own tuned parameters. Batch QPS: all queries in one call.",
        "",
        "| set | S | params | recall@10 S=1 | recall@10 S | batch QPS S=1 | S merged (ratio) "
        "| S separate (ratio) | S at its own params: recall, batch QPS (ratio) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sh = r.get("shards")
        if sh:
            b1 = sh["batch_qps_1"]
            lines.append(
                f"| {r['set']} | {sh['S']} | {sh['params']} | {sh['recall_1']:.4f} | "
                f"{sh['recall_S']:.4f} | {b1:.0f} | {sh['batch_qps_S']:.0f} "
                f"({sh['batch_qps_S'] / b1:.2f}x) | {sh['batch_qps_S_separate']:.0f} "
                f"({sh['batch_qps_S_separate'] / b1:.2f}x) | {sh['own_params']}: "
                f"{sh['recall_S_own']:.4f}, {sh['batch_qps_S_own']:.0f} "
                f"({sh['batch_qps_S_own'] / b1:.2f}x) |"
            )
    lines += [
        "",
        "| set | autofaiss index | its recall@10 | its QPS | our recall@10 at that QPS | its build s | ours | its peak MB | ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        af = r.get("autofaiss")
        if af:
            ap = r["autofaiss_point"]
            lines.append(
                f"| {r['set']} | `{af['index_key']}` {af['index_param']} | {ap['recall']:.4f} | {ap['qps']:.0f} | "
                f"{_f(r.get('ours_recall_at_autofaiss_qps'), '.4f')} | {af['build_s']:.0f} | {r['ours']['build_s']:.0f} | "
                f"{af['peak_rss_mb']:.0f} | {r['ours']['peak_rss_mb']:.0f} |"
            )
    lines += ["", "![recall vs QPS](benchmarks/plots/index_recall_qps.png)", ""]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Ours along its knob and at its tuned point, autofaiss likewise, against exact search."""

    def draw(ax: Any, r: dict[str, Any]) -> None:
        curve(ax, r["ours_curve"], "o-", f"ours: {r['ours']['factory']}")
        ax.plot(
            [r["ours_point"]["qps"]], [r["ours_point"]["recall"]], "k*", ms=14, label="ours (tuned)"
        )
        if r.get("autofaiss_curve"):
            curve(ax, r["autofaiss_curve"], "s--", f"autofaiss: {r['autofaiss']['index_key']}")
            ax.plot(
                [r["autofaiss_point"]["qps"]],
                [r["autofaiss_point"]["recall"]],
                "rX",
                ms=12,
                label="autofaiss (its choice)",
            )
        ax.axvline(r["exact_qps"], color="grey", ls=":", label="exact search")
        ax.axvline(20 * r["exact_qps"], color="grey", ls="--", lw=0.8, label="20x exact")

    recall_qps_plot(results, draw, "single-thread queries / s", path)


def curve(ax: Any, points: list[dict[str, Any]], fmt: str, label: str) -> None:
    """Measured points (each with ``qps`` and ``recall``) as one line of a recall-vs-QPS panel."""
    ax.plot([p["qps"] for p in points], [p["recall"] for p in points], fmt, label=label)


def recall_qps_plot(
    results: list[dict[str, Any]],
    draw: Callable[[Any, dict[str, Any]], None],
    xlabel: str,
    path: str,
) -> None:
    """One panel per vector set: ``draw(ax, result)`` adds the curves; every panel gets the same
    log QPS axis, the recall target line, the set as its title and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        draw(ax, r)
        ax.axhline(TARGET, color="green", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{r['set']}, N={r['n']:,}")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
