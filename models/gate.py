"""`vsearch gate`: promote a candidate model (flip models/PUBLISHED) only when it is better.

Fixed eval data: both models are measured *now*, through their exported serving signatures, on
the same images: the eval split of the candidate's training date (the uint8 pixels the transformed
eval TFRecords hold, through each model's pixel signature). The split is a stable hash of listing_id, so these listings were in
neither model's training data, and re-measuring the published model on them avoids comparing
numbers taken on different days' eval sets. It also tests the exported artifact itself (pixels
in, TFT graph inside), not the in-memory Keras model.

Rules. A first model (nothing published) must beat the best of two baselines measured in the
same run on the same images (a colour histogram, and the untrained network of its own
architecture) on review->listing recall@10 and same-category precision@10, by ``baseline_margin``
or two standard errors of the baseline, whichever is larger: no absolute floor tuned to one
catalog. A later model must beat the published one's recall@10 by ``margin`` with no other metric
dropping by more than ``tolerance``. ``--floor`` adds a check to either rule. The metrics are the
shopper's: held-out review photos against the whole catalog (``models/retrieval_metrics.py``).
With ``require_human_eval`` it must also have a rated blind side-by-side it does not lose
significantly (:func:`human_eval_verdict`). A first model's reasons give one line per capability
(``CAPABILITIES``: buyer photo -> its listing, listing -> same-category listings): fine, or at which
baseline's level; the last reason says what to do next about the capability that failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import tensorflow_transform as tft

from core import paths, pointers, runs, storage
from models import artifact, dataset
from models.baselines import colour_histogram, required_gain
from models.retrieval_eval import evaluate
from models.retrieval_metrics import shopper_metrics
from models.settings import (
    BASELINE_METRICS,
    CAPABILITIES,
    DEFAULT_FLOORS,
    SELECTION_METRIC,
    GateDecision,
    GateSettings,
)

__all__ = ["DEFAULT_FLOORS", "GateDecision", "GateSettings", "decide", "measure", "run"]
GUARDED = (
    "review_recall_at_1",
    "category_precision_at_10",
    "color_precision_at_10",
    "category_accuracy",
    "color_accuracy",
    "shape_accuracy",
    "material_accuracy",
)


def _embed(embedder: artifact.Embedder, pixels: np.ndarray) -> artifact.Outputs:
    """Pixels in; a published model of another image size gets them as lossless PNGs instead,
    which its raw-bytes signature letterboxes (square to square: a plain resize) to its size."""
    if embedder.image_size == pixels.shape[1]:
        return embedder.embed_pixels(pixels)
    from core import images

    return embedder.embed_bytes([images.encode_png(p) for p in pixels])


def measure(
    workdir: str,
    version: str,
    eval_set: dataset.EvalSet,
    tft_output: tft.TFTransformOutput,
    vocabularies: dict[str, list[str]],
    batch_size: int,
) -> dict[str, float]:
    """Retrieval metrics and head accuracies of an exported model on the given eval images."""
    embedder = artifact.Embedder.open(workdir, version)
    # Head outputs are class names; accuracies compare them with the candidate's vocabularies.
    batches = [
        _embed(embedder, pixels) for pixels in dataset.eval_pixels(eval_set, tft_output, batch_size)
    ]
    metrics = evaluate(({"embedding": b["embedding"]} for b in batches), eval_set)
    for label, vocab in vocabularies.items():
        y = eval_set.labels[label]
        present = (y >= 0) & eval_set.held_out  # never the training listings' photos
        if label in batches[0] and present.any():
            pred = np.concatenate([b[label] for b in batches])
            truth = np.array([vocab[i].encode() for i in y[present]])
            metrics[f"{label}_accuracy"] = float(np.mean(pred[present] == truth))
    return metrics


def measure_baselines(
    workdir: str,
    candidate: str,
    eval_set: dataset.EvalSet,
    tft_output: tft.TFTransformOutput,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """The same-run baselines on the candidate's retrieval-test images: a colour histogram
    (computed here) and the untrained network of the candidate's architecture (measured by
    ``vsearch train`` before step 1 on these same images, in its metrics.json)."""
    # Per batch: the histograms are 2 KB an image, the pixels of a 50k-image gallery ~1.4 GB.
    hists = np.concatenate(
        [colour_histogram(p) for p in dataset.eval_pixels(eval_set, tft_output, batch_size)]
    )
    out = {
        "colour histogram": shopper_metrics(
            hists,
            eval_set.listing_ids,
            eval_set.is_review,
            eval_set.held_out,
            eval_set.labels,
        )
    }
    metrics_uri = storage.join(paths.model_dir(workdir, candidate), "metrics.json")
    if storage.exists(metrics_uri):
        untrained = json.loads(storage.read_text(metrics_uri)).get("untrained")
        if untrained:
            out["untrained network"] = {k: float(v) for k, v in untrained.items()}
    return out


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


def run(settings: GateSettings) -> GateDecision:
    with runs.stopwatch() as clock:
        cand_cfg = artifact.read_config(settings.workdir, settings.candidate)
        date = cand_cfg.date
        if not date:
            raise artifact.ModelArtifactError(
                f"{artifact.config_uri(settings.workdir, settings.candidate)} names no training date"
            )
        tft_output = tft.TFTransformOutput(paths.transformed_dir(settings.workdir, date))
        # The same images the candidate's retrieval test used: its held-out listings plus its
        # training listings' photos as the whole-catalog gallery.
        eval_set = dataset.load_eval_set(
            dataset.split_files(settings.workdir, date, dataset.EVAL),
            tft_output,
            gallery_files=dataset.split_files(settings.workdir, date, dataset.TRAIN),
        )
        pointer_uri = paths.published_model_pointer(settings.workdir)
        pointer = pointers.read_pointer(pointer_uri)
        vocabularies = cand_cfg.vocabularies
        cand = measure(
            settings.workdir,
            settings.candidate,
            eval_set,
            tft_output,
            vocabularies,
            settings.batch_size,
        )
        pub = None
        baselines: dict[str, dict[str, float]] = {}
        if pointer.value and pointer.value != settings.candidate:
            pub = measure(
                settings.workdir,
                pointer.value,
                eval_set,
                tft_output,
                vocabularies,
                settings.batch_size,
            )
        if pointer.value == settings.candidate:
            promoted, reasons = False, ["candidate is already the published model"]
        else:
            if pub is None and settings.beat_baselines:
                baselines = measure_baselines(
                    settings.workdir, settings.candidate, eval_set, tft_output, settings.batch_size
                )
            promoted, reasons = decide(
                cand, pub, settings, baselines, int(cand.get("eval_reviews", 0))
            )
            if settings.require_human_eval:
                human_ok, human = human_eval_verdict(
                    settings.workdir, settings.candidate, pointer.value, settings
                )
                promoted, reasons = promoted and human_ok, [*reasons, *human]
        if promoted:
            pointers.compare_and_swap(
                pointer_uri, settings.candidate, pointer
            )  # PointerConflict if raced
    decision = GateDecision(
        promoted,
        settings.candidate,
        pointer.value,
        tuple(reasons),
        cand,
        pub or {},
        date,
        baselines,
    )
    storage.write_text(
        storage.join(paths.model_dir(settings.workdir, settings.candidate), "gate.json"),
        json.dumps(asdict(decision), indent=2, sort_keys=True) + "\n",
    )
    # Written under the candidate's date: the day whose train produced it.
    runs.complete(
        settings.workdir,
        runs.RunSummary(
            "gate", date, read=1, ok=1, dead_lettered=0, wall_s=clock["s"], extra=asdict(decision)
        ),
    )
    verdict = "PROMOTED" if decision.promoted else "NOT promoted"
    print(f"[gate] {settings.candidate}: {verdict} (published was {pointer.value})")
    for reason in reasons:
        print(f"  - {reason}")
    return decision
