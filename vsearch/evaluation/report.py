"""``vsearch eval-report``: precision@k and nDCG@k per model with bootstrap intervals, rater
agreement, and the blind side-by-side's wins/ties/losses with a sign test; JSON plus an HTML page.

A query counts for a model when every one of that model's top-k results has at least one rating
(partly rated queries are counted, not guessed). With several raters a result's grade is their
mean. Precision is reported twice, on the grade scale's words: "relevant" (the share of raters who
said relevant) and "relevant or partly". nDCG@k's ideal is the best ordering of every result known
for the query, not only the list's own: the other model's rated results (side by side) and a
review photo's own listing (relevant by construction: grade 2 unless raters graded it). So a list
that missed the one relevant listing scores below 1 however well it ordered the rest. Side by
side, a query is a win for the candidate when its list's DCG@k (same grades, same gains) is higher
than the baseline's.

``report.json`` is what the gate reads (``pipelines/gate_rules.py``, ``--require-human-eval``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import paths, storage
from core.settings import doc
from vsearch.evaluation import stats
from vsearch.evaluation.ratings import (
    LABELS,
    PARTLY,
    RELEVANT,
    RatingStore,
    is_simulated_name,
)
from vsearch.evaluation.task import TASK, Query, RatingTask, read_task

REPORT_VERSION = 2  # 2: precision per grade, nDCG over every known result, agreement's extent
STRICT = LABELS[RELEVANT]  # "relevant"
LENIENT = f"{LABELS[RELEVANT]} or {LABELS[PARTLY]}"  # "relevant or partly"
# Below this many results rated by every rater, agreement is flagged as too thin to read.
# Kappa's standard error is about sqrt(po (1 - po) / n) / (1 - pe): with po 0.8 and pe 0.4 it is
# 0.09 at 50 results (95 % interval +-0.18) and 0.21 at 10 (+-0.41). Under 50 the interval is wider
# than one of the 0.2-wide bands kappa is read by, so "moderate" cannot be told from "substantial".
MIN_AGREEMENT_ITEMS = 50


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


def _query_row(task: RatingTask, q: Query, version: str, grades: Grades) -> dict[str, Any] | None:
    """One query's figures for one model, or None while a result of its top k is unrated."""
    results = q.results[version][: task.k]
    rated = [grades.get((q.query_id, r.listing_id)) or [] for r in results]
    if not results or not all(rated):
        return None
    mean = [float(np.mean(g)) for g in rated]
    shown = [r.listing_id for r in results]
    # The ideal ranking also knows what this list missed: the other list's rated results and,
    # rated or not, a review photo's own listing.
    missed = [
        float(np.mean(grades[(q.query_id, r.listing_id)]))
        for r in task.results_of(q)
        if r.listing_id not in shown and (q.query_id, r.listing_id) in grades
    ]
    known = q.known_relevant
    if known is not None and known not in shown and (q.query_id, known) not in grades:
        missed.append(float(RELEVANT))
    return {
        "query_id": q.query_id,
        "kind": q.kind,
        "precision_relevant": stats.precision_at_k(
            [float(np.mean([x == RELEVANT for x in g])) for g in rated], task.k
        ),
        "precision_relevant_or_partly": stats.precision_at_k(
            [float(np.mean([x >= PARTLY for x in g])) for g in rated], task.k
        ),
        "ndcg": stats.ndcg_at_k(mean, task.k, missed),
        "dcg": stats.dcg(mean),
        "grades": [round(g, 3) for g in mean],  # mean grade of each result, in rank order
        "rater_grades": [sorted(g) for g in rated],  # every rater's grade of each result
        "known_relevant": known,
        "known_relevant_rank": shown.index(known) + 1 if known in shown else None,
    }


def _model_block(
    task: RatingTask, version: str, grades: Grades, s: ReportSettings
) -> dict[str, Any]:
    rows = [_query_row(task, q, version, grades) for q in task.queries]
    per_query = [row for row in rows if row is not None]
    k = task.k
    return {
        "retrieval": task.retrieval.get(version, ""),
        "queries_rated": len(per_query),
        "queries_total": len(task.queries),
        f"precision_relevant_at_{k}": _interval([p["precision_relevant"] for p in per_query], s),
        f"precision_relevant_or_partly_at_{k}": _interval(
            [p["precision_relevant_or_partly"] for p in per_query], s
        ),
        f"ndcg_at_{k}": _interval([p["ndcg"] for p in per_query], s),
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


def _agreement(
    by_rater: dict[str, dict[tuple[str, str], int]], s: ReportSettings
) -> dict[str, Any]:
    """Kappa over the results every rater graded, with its extent, interval and a warning when
    it rests on fewer than ``MIN_AGREEMENT_ITEMS`` results."""
    raters = sorted(by_rater)
    items = sorted({key for r in raters for key in by_rater[r]})
    shared = [key for key in items if all(key in by_rater[r] for r in raters)]
    labels = np.array([[by_rater[r][key] for r in raters] for key in shared], dtype=np.int64)

    def kappa(rows: np.ndarray) -> float:
        if len(raters) == 2:
            return stats.cohen_kappa(rows[:, 0].tolist(), rows[:, 1].tolist())
        counts = np.stack([np.sum(rows == c, axis=1) for c in LABELS], axis=1)
        return stats.fleiss_kappa(counts.tolist())

    out: dict[str, Any] = {
        "method": "cohen_kappa" if len(raters) == 2 else "fleiss_kappa",
        "raters": raters,
        "rater_count": len(raters),
        "items_rated_by_all": len(shared),
        "min_items": MIN_AGREEMENT_ITEMS,
        "kappa": None,
        "ci_low": None,
        "ci_high": None,
        "percent_agreement": None,
        "warning": None,
    }
    if shared:
        low, high = stats.bootstrap_ci(
            [float(i) for i in range(len(shared))],  # resample results
            lambda idx: kappa(labels[idx.astype(np.int64)]),
            samples=s.bootstrap_samples,
            seed=s.seed,
        )
        out |= {
            "kappa": kappa(labels),
            "ci_low": low,
            "ci_high": high,
            "percent_agreement": float(np.mean([len(set(row)) == 1 for row in labels.tolist()])),
        }
    if len(shared) < MIN_AGREEMENT_ITEMS:
        out["warning"] = (
            f"only {len(shared)} results were rated by all {len(raters)} raters (fewer than "
            f"{MIN_AGREEMENT_ITEMS}): kappa's 95 % interval is then typically wider than +-0.18, "
            "too wide to tell moderate from substantial agreement"
        )
    return out


def build_report(task: RatingTask, task_uri: str, s: ReportSettings) -> dict[str, Any]:
    everyone = RatingStore(task_uri).all()
    grades: Grades = {}
    by_rater: dict[str, dict[tuple[str, str], int]] = {}
    simulated: set[str] = set()
    # Ids are stable across re-sampling: ratings of pairs this task no longer shows stay out.
    shown = {(q.query_id, r.listing_id) for q in task.queries for r in task.results_of(q)}
    for rater, ratings in everyone.items():
        for key, r in ratings.items():
            if key not in shown:
                continue
            grades.setdefault(key, []).append(r.grade)
            by_rater.setdefault(rater, {})[key] = r.grade
            if r.simulated or is_simulated_name(rater):
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
        "agreement": _agreement(by_rater, s) if len(by_rater) >= 2 else None,
    }
    return report


def run(s: ReportSettings) -> tuple[str, str]:
    """Write ``report.json`` and ``report.html`` beside the task; returns both URIs."""
    from vsearch.evaluation import report_html

    task = read_task(s.task)
    report = build_report(task, s.task, s)
    json_uri, html_uri = paths.eval_report(s.task, ".json"), paths.eval_report(s.task, ".html")
    storage.write_text(json_uri, json.dumps(report, indent=1, sort_keys=True) + "\n")
    storage.write_text(html_uri, report_html.render(report, task, s.worst))
    return json_uri, html_uri


def _figure(m: dict[str, float | None]) -> str:
    return f"{m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def summary_lines(report: dict[str, Any]) -> list[str]:
    k = report["k"]
    lines = []
    if report["simulated"]:
        lines.append("SIMULATED ratings (catalog ground truth, not a person) are included")
    for v, m in report["metrics"].items():
        if m[f"ndcg_at_{k}"]["mean"] is None:
            lines.append(f"{v}: no fully rated query yet (0/{m['queries_total']})")
            continue
        lines.append(
            f"{v}: precision@{k} {STRICT} {_figure(m[f'precision_relevant_at_{k}'])}, "
            f"{LENIENT} {_figure(m[f'precision_relevant_or_partly_at_{k}'])}  "
            f"nDCG@{k} {_figure(m[f'ndcg_at_{k}'])}  "
            f"({m['queries_rated']}/{m['queries_total']} queries, {m['retrieval']})"
        )
    if sbs := report["side_by_side"]:
        lines.append(
            f"side by side {sbs['candidate']} vs {sbs['baseline']}: {sbs['wins']} wins, "
            f"{sbs['ties']} ties, {sbs['losses']} losses, sign test p={sbs['p_value']:.4f}"
        )
    agr = report["agreement"]
    if agr is None:
        lines.append(f"agreement: not measured ({len(report['raters'])} rater(s); it needs 2)")
    else:
        kappa = "n/a" if agr["kappa"] is None else _figure({**agr, "mean": agr["kappa"]})
        lines.append(
            f"agreement ({agr['method']}): {kappa} over {agr['items_rated_by_all']} results "
            f"rated by all {agr['rater_count']} raters ({', '.join(agr['raters'])})"
        )
        if agr["warning"]:
            lines.append(f"WARNING agreement: {agr['warning']}")
    return lines


def cli_run(s: ReportSettings) -> tuple[str, str]:
    json_uri, html_uri = run(s)
    for line in summary_lines(json.loads(storage.read_text(json_uri))):
        print(f"  {line}")
    print(f"[eval-report] {json_uri}\n[eval-report] {html_uri}")
    return json_uri, html_uri
