"""`vsearch gate`: promote a candidate model (flip models/PUBLISHED) only when it is better.

Fixed eval data: both models are measured *now*, through their exported serving signatures, on
the same images: the eval split of the candidate's training date (raw PNG bytes kept in the
transformed eval TFRecords). The split is a stable hash of listing_id, so these listings were in
neither model's training data, and re-measuring the published model on them avoids comparing
numbers taken on different days' eval sets. It also tests the exported artifact itself (raw bytes
in, TFT graph inside), not the in-memory Keras model.

Rules: the candidate's review->listing recall@10 must beat the published model's by at least
``margin`` and no other metric may drop by more than ``tolerance``; with no published model the
candidate must clear every ``floor``. With ``require_human_eval`` it must also have a rated
blind side-by-side it does not lose significantly (:func:`human_eval_verdict`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models import dataset
from models.export import load_serving
from models.retrieval_eval import SELECTION_METRIC, evaluate
from vsearch.core import paths, runs, storage

# A first model must at least find a buyer's photo's listing in the top 10 half the time and
# return mostly same-category neighbours; a random-init or shuffled-label model does neither.
DEFAULT_FLOORS: tuple[tuple[str, float], ...] = (
    (SELECTION_METRIC, 0.5),
    ("category_precision_at_10", 0.7),
)
GUARDED = (
    "review_recall_at_1",
    "category_precision_at_10",
    "color_precision_at_10",
    "category_accuracy",
    "color_accuracy",
    "shape_accuracy",
    "material_accuracy",
)


@dataclass(frozen=True)
class GateSettings:
    workdir: str
    candidate: str
    # 0.0: an equally good candidate is promoted (it was trained on fresher data).
    margin: float = 0.0
    # Metrics are measured on a few hundred images: a 2-point wobble is noise, not a regression.
    tolerance: float = 0.02
    floors: tuple[tuple[str, float], ...] = DEFAULT_FLOORS
    batch_size: int = 128
    # Off by default: a human verdict needs people (or a demo's simulated rater) in the loop.
    # On: refuse unless a blind side-by-side against the published model (or, for a first model,
    # any rating of it) exists under WORKDIR/eval/ and the candidate does not lose it significantly.
    require_human_eval: bool = False
    human_eval_alpha: float = 0.05  # sign-test level for "loses significantly"
    allow_simulated_ratings: bool = False  # simulated ratings show the loop; they are no verdict


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    candidate: str
    published: str | None  # the version PUBLISHED held when the gate ran
    reasons: tuple[str, ...]
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    published_metrics: dict[str, float] = field(default_factory=dict)
    eval_date: str = ""


def _embed(embedder_uri: str, pngs: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    serve = load_serving(embedder_uri)
    for start in range(0, len(pngs), batch_size):
        out = serve(images=tf.constant(list(pngs[start : start + batch_size]), tf.string))
        # Head outputs are class names here; accuracies need indices, so only the embedding is used
        # and head accuracies are compared through names below.
        yield {k: v.numpy() for k, v in out.items()}


def measure(
    workdir: str,
    version: str,
    eval_set: dataset.EvalSet,
    vocabularies: dict[str, list[str]],
    batch_size: int,
) -> dict[str, float]:
    """Retrieval metrics and head accuracies of an exported model on the given eval images."""
    assert eval_set.pngs is not None
    batches = list(_embed(paths.embedder_dir(workdir, version), eval_set.pngs, batch_size))
    metrics = evaluate(({"embedding": b["embedding"]} for b in batches), eval_set)
    for label, vocab in vocabularies.items():
        y = eval_set.labels[label]
        present = y >= 0
        if label in batches[0] and present.any():
            pred = np.concatenate([b[label] for b in batches])
            truth = np.array([vocab[i].encode() for i in y[present]])
            metrics[f"{label}_accuracy"] = float(np.mean(pred[present] == truth))
    return metrics


def decide(
    candidate: dict[str, float], published: dict[str, float] | None, settings: GateSettings
) -> tuple[bool, list[str]]:
    """The promotion rule, pure: (promote?, human-readable reasons)."""
    reasons: list[str] = []
    ok = True
    if published is None:
        for metric, floor in settings.floors:
            value = candidate.get(metric, 0.0)
            passed = value >= floor
            ok &= passed
            reasons.append(f"{metric} {value:.4f} {'>=' if passed else '<'} floor {floor:.4f}")
        return ok, ["no published model: first model must clear the floors", *reasons]
    gain = candidate.get(SELECTION_METRIC, 0.0) - published.get(SELECTION_METRIC, 0.0)
    if gain + 1e-12 < settings.margin:
        ok = False
        reasons.append(
            f"{SELECTION_METRIC} {candidate.get(SELECTION_METRIC, 0.0):.4f} vs published "
            f"{published.get(SELECTION_METRIC, 0.0):.4f}: gain {gain:+.4f} < margin {settings.margin:.4f}"
        )
    else:
        reasons.append(f"{SELECTION_METRIC} gain {gain:+.4f} >= margin {settings.margin:.4f}")
    for metric in GUARDED:
        if metric in candidate and metric in published:
            drop = published[metric] - candidate[metric]
            if drop > settings.tolerance:
                ok = False
                reasons.append(
                    f"{metric} dropped {drop:.4f} ({published[metric]:.4f} -> {candidate[metric]:.4f}) > tolerance {settings.tolerance:.4f}"
                )
    return ok, reasons


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
        cand_cfg = json.loads(
            storage.read_text(
                storage.join(paths.model_dir(settings.workdir, settings.candidate), "config.json")
            )
        )
        date = cand_cfg["date"]
        tft_output = tft.TFTransformOutput(paths.transform_fn_dir(settings.workdir, date))
        eval_set = dataset.load_eval_set(
            dataset.split_files(settings.workdir, date, dataset.EVAL), tft_output, with_png=True
        )
        pointer_uri = paths.published_model_pointer(settings.workdir)
        pointer = storage.read_pointer(pointer_uri)
        vocabularies = cand_cfg["vocabularies"]
        cand = measure(
            settings.workdir, settings.candidate, eval_set, vocabularies, settings.batch_size
        )
        pub = None
        if pointer.value and pointer.value != settings.candidate:
            pub = measure(
                settings.workdir, pointer.value, eval_set, vocabularies, settings.batch_size
            )
        if pointer.value == settings.candidate:
            promoted, reasons = False, ["candidate is already the published model"]
        else:
            promoted, reasons = decide(cand, pub, settings)
            if settings.require_human_eval:
                human_ok, human = human_eval_verdict(
                    settings.workdir, settings.candidate, pointer.value, settings
                )
                promoted, reasons = promoted and human_ok, [*reasons, *human]
        if promoted:
            storage.compare_and_swap(
                pointer_uri, settings.candidate, pointer
            )  # PointerConflict if raced
    decision = GateDecision(
        promoted, settings.candidate, pointer.value, tuple(reasons), cand, pub or {}, date
    )
    storage.write_text(
        storage.join(paths.model_dir(settings.workdir, settings.candidate), "gate.json"),
        json.dumps(asdict(decision), indent=2, sort_keys=True) + "\n",
    )
    runs.write_summary(
        settings.workdir,
        runs.RunSummary(
            "gate",
            date,
            read=1,
            ok=1,
            dead_lettered=0,
            wall_s=clock["s"],
            extra={
                "candidate": settings.candidate,
                "published_before": pointer.value,
                "promoted": promoted,
                "reasons": list(reasons),
            },
        ),
    )
    return decision


def _floor(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--floor expects metric=value, got {text!r}") from e


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="vsearch gate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--candidate", required=True, help="model VERSION under WORKDIR/models/")
    p.add_argument("--margin", type=float, default=GateSettings.margin)
    p.add_argument("--tolerance", type=float, default=GateSettings.tolerance)
    p.add_argument(
        "--floor",
        type=_floor,
        action="append",
        default=None,
        help=f"metric=value, repeatable (default {dict(DEFAULT_FLOORS)})",
    )
    p.add_argument(
        "--require-human-eval",
        action="store_true",
        help="also require a rated blind side-by-side (vsearch eval-report) the candidate does not lose",
    )
    p.add_argument("--allow-simulated-ratings", action="store_true", help="demo only")
    a = p.parse_args(argv)
    settings = GateSettings(
        a.workdir,
        a.candidate,
        a.margin,
        a.tolerance,
        tuple(a.floor) if a.floor else DEFAULT_FLOORS,
        require_human_eval=a.require_human_eval,
        allow_simulated_ratings=a.allow_simulated_ratings,
    )
    d = run(settings)
    verdict = "PROMOTED" if d.promoted else "NOT promoted"
    print(f"[gate] {d.candidate}: {verdict} (published was {d.published})")
    for reason in d.reasons:
        print(f"  - {reason}")
    return 0
