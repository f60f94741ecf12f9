"""``vsearch eval-report``: precision@k and nDCG@k per model with bootstrap intervals, rater
agreement, and the blind side-by-side's wins/ties/losses with a sign test; JSON plus an HTML page.

A query counts for a model when every one of that model's top-k results has at least one rating
(partly rated queries are counted, not guessed). With several raters a result's grade is their
mean, and its relevance the share of raters who said "relevant". Side by side, a query is a win
for the candidate when its list's DCG@k (same grades, same gains) is higher than the baseline's.

``report.json`` is what the gate reads (``models/gate.py``, ``--require-human-eval``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vsearch.app.evaluation import stats
from vsearch.app.evaluation.ratings import RatingStore
from vsearch.app.evaluation.task import TASK, RatingTask, read_task
from vsearch.core import paths, storage
from vsearch.core.settings import doc

REPORT_VERSION = 1


@dataclass(frozen=True)
class ReportSettings:
    task: str = field(metadata=TASK)
    alpha: float = field(
        default=0.05, metadata=doc("sign-test level for 'loses (or wins) significantly'")
    )
    bootstrap_samples: int = field(  # percentile intervals stable to ~0.005 at 50 queries
        default=2000, metadata=doc("bootstrap resamples for the confidence intervals")
    )
    worst: int = field(default=5, metadata=doc("worst queries shown as pictures in the page"))
    seed: int = field(default=0, metadata=doc("seed of the bootstrap"))


Grades = dict[tuple[str, str], list[int]]  # (query_id, listing_id) -> every rater's grade


def _interval(values: list[float], s: ReportSettings) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None}
    low, high = stats.bootstrap_ci(values, samples=s.bootstrap_samples, seed=s.seed)
    return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}


def _model_block(
    task: RatingTask, version: str, grades: Grades, s: ReportSettings
) -> dict[str, Any]:
    per_query: list[dict[str, Any]] = []
    for q in task.queries:
        results = q.results[version][: task.k]
        gs = [grades.get((q.query_id, r.listing_id)) for r in results]
        if not results or any(not g for g in gs):
            continue
        mean = [float(np.mean(g)) for g in gs if g]
        relevant = [float(np.mean([x == 2 for x in g])) for g in gs if g]
        lenient = [float(np.mean([x >= 1 for x in g])) for g in gs if g]
        row: dict[str, Any] = {
            "query_id": q.query_id,
            "precision": stats.precision_at_k(relevant, task.k),
            "precision_lenient": stats.precision_at_k(lenient, task.k),
            "ndcg": stats.ndcg_at_k(mean, task.k),
            "dcg": stats.dcg(mean),
            "grades": [round(g, 3) for g in mean],  # mean grade of each result, in rank order
        }
        per_query.append(row)
    return {
        "retrieval": task.retrieval.get(version, ""),
        "queries_rated": len(per_query),
        "queries_total": len(task.queries),
        f"precision_at_{task.k}": _interval([p["precision"] for p in per_query], s),
        f"precision_lenient_at_{task.k}": _interval([p["precision_lenient"] for p in per_query], s),
        f"ndcg_at_{task.k}": _interval([p["ndcg"] for p in per_query], s),
        "per_query": per_query,
    }


def _side_by_side(task: RatingTask, blocks: dict[str, Any], alpha: float) -> dict[str, Any]:
    cand, base = task.models
    a = {p["query_id"]: p["dcg"] for p in blocks[cand]["per_query"]}
    b = {p["query_id"]: p["dcg"] for p in blocks[base]["per_query"]}
    both = [q for q in a if q in b]
    wins = sum(a[q] > b[q] + 1e-9 for q in both)
    losses = sum(b[q] > a[q] + 1e-9 for q in both)
    p = stats.sign_test(wins, losses)
    return {
        "candidate": cand,
        "baseline": base,
        "queries_compared": len(both),
        "wins": wins,
        "ties": len(both) - wins - losses,
        "losses": losses,
        "p_value": p,
        "alpha": alpha,
        "candidate_loses_significantly": losses > wins and p < alpha,
        "candidate_wins_significantly": wins > losses and p < alpha,
    }


def _agreement(task: RatingTask, by_rater: dict[str, dict[tuple[str, str], int]]) -> dict[str, Any]:
    raters = sorted(by_rater)
    items = sorted({key for r in raters for key in by_rater[r]})
    shared = [key for key in items if all(key in by_rater[r] for r in raters)]
    out: dict[str, Any] = {"raters": raters, "items_rated_by_all": len(shared)}
    if len(raters) == 2:
        a = [by_rater[raters[0]][key] for key in shared]
        b = [by_rater[raters[1]][key] for key in shared]
        out["method"] = "cohen_kappa"
        out["kappa"] = stats.cohen_kappa(a, b) if shared else None
    else:
        counts = [[sum(by_rater[r][key] == c for r in raters) for c in (0, 1, 2)] for key in shared]
        out["method"] = "fleiss_kappa"
        out["kappa"] = stats.fleiss_kappa(counts) if shared else None
    if shared:
        out["percent_agreement"] = float(
            np.mean([len({by_rater[r][key] for r in raters}) == 1 for key in shared])
        )
    return out


def build_report(task: RatingTask, task_uri: str, s: ReportSettings) -> dict[str, Any]:
    everyone = RatingStore(task_uri).all()
    grades: Grades = {}
    by_rater: dict[str, dict[tuple[str, str], int]] = {}
    simulated: set[str] = set()
    for rater, ratings in everyone.items():
        for key, r in ratings.items():
            grades.setdefault(key, []).append(r.grade)
            by_rater.setdefault(rater, {})[key] = r.grade
            if r.simulated:
                simulated.add(rater)
    blocks = {v: _model_block(task, v, grades, s) for v in task.models}
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "task_id": task.task_id,
        "task": storage.normalize(task_uri),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "date": task.date,
        "k": task.k,
        "models": list(task.models),
        "candidate": task.candidate,
        "baseline": task.baseline,
        "raters": [
            {"name": r, "ratings": len(by_rater[r]), "simulated": r in simulated}
            for r in sorted(by_rater)
        ],
        "simulated": bool(simulated),
        "ratings": sum(len(v) for v in by_rater.values()),
        "results_to_rate": task.total_results(),
        "metrics": blocks,
        "side_by_side": _side_by_side(task, blocks, s.alpha) if task.side_by_side else None,
        "agreement": _agreement(task, by_rater) if len(by_rater) >= 2 else None,
    }
    return report


def run(s: ReportSettings) -> tuple[str, str]:
    """Write ``report.json`` and ``report.html`` beside the task; returns both URIs."""
    from vsearch.app.evaluation import report_html

    task = read_task(s.task)
    report = build_report(task, s.task, s)
    json_uri, html_uri = paths.eval_report(s.task, ".json"), paths.eval_report(s.task, ".html")
    storage.write_text(json_uri, json.dumps(report, indent=1, sort_keys=True) + "\n")
    storage.write_text(html_uri, report_html.render(report, task, s.worst))
    return json_uri, html_uri


def summary_lines(report: dict[str, Any]) -> list[str]:
    k = report["k"]
    lines = []
    if report["simulated"]:
        lines.append("SIMULATED ratings (catalog ground truth, not a person) are included")
    for v, m in report["metrics"].items():
        p, n = m[f"precision_at_{k}"], m[f"ndcg_at_{k}"]
        if p["mean"] is None:
            lines.append(f"{v}: no fully rated query yet (0/{m['queries_total']})")
            continue
        lines.append(
            f"{v}: precision@{k} {p['mean']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]  "
            f"nDCG@{k} {n['mean']:.3f} [{n['ci_low']:.3f}, {n['ci_high']:.3f}]  "
            f"({m['queries_rated']}/{m['queries_total']} queries, {m['retrieval']})"
        )
    if sbs := report["side_by_side"]:
        lines.append(
            f"side by side {sbs['candidate']} vs {sbs['baseline']}: {sbs['wins']} wins, "
            f"{sbs['ties']} ties, {sbs['losses']} losses, sign test p={sbs['p_value']:.4f}"
        )
    if agr := report["agreement"]:
        kappa = "n/a" if agr["kappa"] is None else f"{agr['kappa']:.3f}"
        lines.append(f"agreement ({agr['method']}, {len(agr['raters'])} raters): {kappa}")
    return lines


def cli_run(s: ReportSettings) -> tuple[str, str]:
    json_uri, html_uri = run(s)
    for line in summary_lines(json.loads(storage.read_text(json_uri))):
        print(f"  {line}")
    print(f"[eval-report] {json_uri}\n[eval-report] {html_uri}")
    return json_uri, html_uri
