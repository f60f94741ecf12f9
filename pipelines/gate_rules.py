"""The gate's promotion rules, pure: from measured metrics (and rated side-by-sides) to a
decision and the reasons a person reads. The measuring is models/gate.py; the stage that runs
both and flips models/PUBLISHED is pipelines/gate.py."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from core import paths, storage
from models.baselines import required_gain
from models.capabilities import BASELINE_METRICS, CAPABILITIES, SELECTION_METRIC

if TYPE_CHECKING:
    from pipelines.gate import GateSettings

# Metrics a later model may not lose by more than the tolerance.
GUARDED = (
    "review_recall_at_1",
    "category_precision_at_10",
    "color_precision_at_10",
    "category_accuracy",
    "color_accuracy",
    "shape_accuracy",
    "material_accuracy",
)


# What to do when a first model has not learnt a BASELINE_METRICS capability (the last reason).
_FIXES = {
    SELECTION_METRIC: (
        "train longer (--epochs), with more buyer photos (check-catalog's reviews_ok), and "
        "check that they show the listed item"
    ),
    "category_precision_at_10": (
        "check the category labels (the classes in models/VERSION/config.json, with enough "
        "listings each) and train longer (--epochs)"
    ),
}


def _about(metric: str) -> str:
    """``capability: `` before a metric's reason, where the metric has one."""
    return f"{CAPABILITIES[metric][0]}: " if metric in CAPABILITIES else ""


def _baseline_line(
    metric: str, value: float, known: dict[str, float], queries: int, margin: float
) -> tuple[bool, str]:
    """One capability against the same-run baselines: passed?, and a line saying so."""
    what, figure = CAPABILITIES[metric]
    name, best = max(known.items(), key=lambda kv: kv[1])
    need = best + required_gain(best, queries, margin)
    if value >= need:
        return True, (
            f"{what} is fine: {figure} {value:.3f} vs best baseline {best:.3f} "
            f"({name}; needs >= {need:.3f})"
        )
    # Its level is the nearest baseline it does not clearly beat: level with the untrained
    # network it learnt nothing; with the histogram, no more than colour alone gives.
    gains = {n: required_gain(b, queries, margin) for n, b in known.items()}
    level = min(
        (n for n, b in known.items() if value < b + gains[n]), key=lambda n: abs(known[n] - value)
    )
    where = "below" if value < known[level] - gains[level] else "at"
    bar = f"needs >= {need:.3f}" + ("" if level == name else f" to clear the {name}'s {best:.3f}")
    return False, (
        f"{what}: {figure} {value:.3f} is {where} the {level}'s level ({known[level]:.3f}; {bar})"
    )


def _baseline_checks(
    candidate: dict[str, float],
    baselines: dict[str, dict[str, float]],
    queries: int,
    settings: GateSettings,
) -> tuple[list[str], list[str]]:
    """(the BASELINE_METRICS that failed, one line per capability)."""
    failed, lines = [], []
    for metric in BASELINE_METRICS:
        known = {name: b[metric] for name, b in baselines.items() if metric in b}
        if not known:
            lines.append(f"{_about(metric)}no same-run baseline measured {metric}: not checked")
            continue
        value = candidate.get(metric, 0.0)
        passed, line = _baseline_line(metric, value, known, queries, settings.baseline_margin)
        lines.append(line)
        if not passed:
            failed.append(metric)
    return failed, lines


def decide(
    candidate: dict[str, float],
    published: dict[str, float] | None,
    settings: GateSettings,
    baselines: dict[str, dict[str, float]] | None = None,
    queries: int = 0,
) -> tuple[bool, list[str]]:
    """The promotion rule, pure: (promote?, human-readable reasons, ending with what to do next).

    A first model must beat the best of the same-run ``baselines`` by a margin on each of
    BASELINE_METRICS (one line per capability, naming the baseline a failed one is level with);
    a later one must beat the published model by ``margin`` with no other metric dropping by
    more than ``tolerance``. User floors add a check to either rule.
    """
    reasons: list[str] = []
    failed: list[str] = []
    ok = True
    if published is None:
        reasons.append("no published model: the first model is judged against same-run baselines")
        if settings.beat_baselines:
            failed, why = _baseline_checks(candidate, baselines or {}, queries, settings)
            ok &= not failed
            reasons += why
    else:
        new, old = candidate.get(SELECTION_METRIC, 0.0), published.get(SELECTION_METRIC, 0.0)
        gain, about = new - old, f"{_about(SELECTION_METRIC)}{SELECTION_METRIC}"
        if gain + 1e-12 < settings.margin:
            ok = False
            reasons.append(
                f"{about} {new:.4f} vs published {old:.4f}: "
                f"gain {gain:+.4f} < margin {settings.margin:.4f}"
            )
        else:
            reasons.append(f"{about} gain {gain:+.4f} >= margin {settings.margin:.4f}")
        for metric in GUARDED:
            if metric in candidate and metric in published:
                drop = published[metric] - candidate[metric]
                if drop > settings.tolerance:
                    ok = False
                    reasons.append(
                        f"{_about(metric)}{metric} dropped {drop:.4f} ({published[metric]:.4f}"
                        f" -> {candidate[metric]:.4f}) > tolerance {settings.tolerance:.4f}"
                    )
    for metric, floor in settings.floors:
        value = candidate.get(metric, 0.0)
        passed = value >= floor
        ok &= passed
        reasons.append(
            f"{_about(metric)}{metric} {value:.4f} {'>=' if passed else '<'} floor {floor:.4f}"
        )
    reasons.append(_next_step(ok, published is None, failed))
    return ok, reasons


def _next_step(ok: bool, first: bool, failed: list[str]) -> str:
    if ok:
        return "next: embed --full with the new model, then build-index and publish"
    if first and failed:
        free = "beyond what the same-run baselines give for free"
        if len(failed) == 1:
            what, fix = CAPABILITIES[failed[0]][0], _FIXES[failed[0]]
            return f"next: the model has not learnt {what} {free}: {fix}; then run the gate again"
        names = " nor ".join(CAPABILITIES[m][0] for m in failed)
        fixes = "; ".join(f"for {CAPABILITIES[m][0]}: {_FIXES[m]}" for m in failed)
        return (
            f"next: the model has learnt neither {names} {free}: {fixes}; then run the gate again"
        )
    if first:
        return (
            "next: the model misses a --floor: train longer (--epochs) or with more data, or "
            "lower that --floor on purpose, then run the gate again"
        )
    return (
        "next: keep the published model (embed runs incrementally with it); to replace it, "
        "retrain (more epochs, fresher data) or lower --margin / raise --tolerance on purpose"
    )


def _eval_reports(workdir: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for uri in storage.glob(paths.eval_task_reports(workdir)):
        try:
            out.append((uri, json.loads(storage.read_text(uri))))
        except (storage.StorageError, ValueError):
            continue  # a report being rewritten or corrupt is not a verdict
    return out


def human_eval_verdict(
    workdir: str, candidate: str, published: str | None, settings: GateSettings
) -> tuple[bool, list[str]]:
    """The ``require_human_eval`` rule, from ``vsearch eval-report``'s report.json files.

    With a published model: the newest report of a blind side-by-side of ``candidate`` against
    it must have compared at least one query and the candidate must not lose it significantly
    (more losses than wins, sign test p < alpha). With none: the candidate must have been rated.
    """
    how = (
        f"vsearch eval-sample --model {candidate}"
        + (f" --against {published}" if published else "")
        + ", vsearch rate, vsearch eval-report"
    )
    found = []
    for uri, r in _eval_reports(workdir):
        if r.get("candidate") != candidate:
            continue
        if published is not None:
            sbs = r.get("side_by_side") or {}
            if r.get("baseline") == published and sbs.get("queries_compared", 0) > 0:
                found.append((str(r.get("created_at", "")), uri, r))
        elif (r.get("metrics", {}).get(candidate, {}).get("queries_rated", 0)) > 0:
            found.append((str(r.get("created_at", "")), uri, r))
    if not found:
        against = f"blind side-by-side against {published}" if published else "rating"
        return False, [
            f"human eval required: no {against} of {candidate} under "
            f"{paths.eval_root(workdir)} (run {how})"
        ]
    _, uri, report = max(found, key=lambda t: t[:2])
    if report.get("simulated") and not settings.allow_simulated_ratings:
        return False, [f"human eval required: the ratings in {uri} are simulated, not a person's"]
    if published is None:
        m = report["metrics"][candidate]
        return True, [f"human eval: {m['queries_rated']} queries rated ({uri})"]
    sbs = report["side_by_side"]
    wins, ties, losses, p = sbs["wins"], sbs["ties"], sbs["losses"], float(sbs["p_value"])
    summary = f"{wins} wins, {ties} ties, {losses} losses vs {published}, sign test p={p:.4f}"
    if losses > wins and p < settings.human_eval_alpha:
        return False, [
            f"human eval: candidate loses the blind side-by-side significantly: {summary} "
            f"< alpha {settings.human_eval_alpha} ({uri})"
        ]
    return True, [f"human eval: {summary} ({uri})"]
