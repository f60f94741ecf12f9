"""`vsearch gate`: promote a candidate model (flip models/PUBLISHED) only when it is better.

Fixed eval data: both models are measured *now*, through their exported serving signatures, on
the same images: the eval split of the candidate's training date (the uint8 pixels the transformed
eval TFRecords hold, through each model's pixel signature). The split is a stable hash of listing_id, so these listings were in
neither model's training data, and re-measuring the published model on them avoids comparing
numbers taken on different days' eval sets. It also tests the exported artifact itself (pixels
in, TFT graph inside), not the in-memory Keras model.

Rules: the candidate's review->listing recall@10 must beat the published model's by at least
``margin`` and no other metric may drop by more than ``tolerance``; with no published model the
candidate must clear every ``floor``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow_transform as tft

from models import artifact, dataset
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


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    candidate: str
    published: str | None  # the version PUBLISHED held when the gate ran
    reasons: tuple[str, ...]
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    published_metrics: dict[str, float] = field(default_factory=dict)
    eval_date: str = ""


def _embed(embedder: artifact.Embedder, pixels: np.ndarray) -> artifact.Outputs:
    """Pixels in; a published model of another image size gets them as lossless PNGs instead,
    which its raw-bytes signature letterboxes (square to square: a plain resize) to its size."""
    if embedder.image_size == pixels.shape[1]:
        return embedder.embed_pixels(pixels)
    from vsearch.core import images

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


def run(settings: GateSettings) -> GateDecision:
    with runs.stopwatch() as clock:
        cand_cfg = artifact.read_config(settings.workdir, settings.candidate)
        date = cand_cfg.date
        if not date:
            raise artifact.ModelArtifactError(
                f"{artifact.config_uri(settings.workdir, settings.candidate)} names no training date"
            )
        tft_output = tft.TFTransformOutput(paths.transformed_dir(settings.workdir, date))
        eval_set = dataset.load_eval_set(
            dataset.split_files(settings.workdir, date, dataset.EVAL), tft_output
        )
        pointer_uri = paths.published_model_pointer(settings.workdir)
        pointer = storage.read_pointer(pointer_uri)
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
            promoted, reasons = decide(cand, pub, settings)
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
    a = p.parse_args(argv)
    settings = GateSettings(
        a.workdir, a.candidate, a.margin, a.tolerance, tuple(a.floor) if a.floor else DEFAULT_FLOORS
    )
    d = run(settings)
    verdict = "PROMOTED" if d.promoted else "NOT promoted"
    print(f"[gate] {d.candidate}: {verdict} (published was {d.published})")
    for reason in d.reasons:
        print(f"  - {reason}")
    return 0
