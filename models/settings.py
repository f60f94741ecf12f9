"""Settings and results of the model stages (train's result, the gate's settings and decision).

Light on purpose (no TensorFlow): the CLI is built from these dataclasses, ``vsearch gate
--help`` must answer at once, and the DAG and backfill read a finished stage's result back from
its run summary (``from_summary``) without loading a model. ``TrainConfig`` (models/config.py)
is the train stage's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.settings import WORKDIR, doc

# The metric that picks the best epoch and decides promotion: a buyer's photo finds its listing.
SELECTION_METRIC = "review_recall_at_10"

# What a first model must beat the same-run baselines on (models/baselines.py): the shopper's
# figure, and neighbours that share the category. Not colour precision: a colour histogram is a
# colour descriptor and may win there on any catalog (BENCHMARKS.md).
BASELINE_METRICS: tuple[str, ...] = (SELECTION_METRIC, "category_precision_at_10")

# What a shopper gets from each metric, and its short name: the gate's reasons say which
# capability failed, not only which number (every one of BASELINE_METRICS has an entry).
CAPABILITIES: dict[str, tuple[str, str]] = {
    SELECTION_METRIC: ("buyer photo -> its listing", "recall@10"),
    "review_recall_at_1": ("buyer photo -> its listing as the first hit", "recall@1"),
    "category_precision_at_10": ("listing -> same-category listings", "precision@10"),
    "color_precision_at_10": ("listing -> same-colour listings", "precision@10"),
    "category_accuracy": ("photo -> its category", "accuracy"),
    "color_accuracy": ("photo -> its colour", "accuracy"),
    "shape_accuracy": ("photo -> its shape", "accuracy"),
    "material_accuracy": ("photo -> its material", "accuracy"),
}

# No absolute floors by default: a floor tuned to one catalog refuses good models on another
# (a user's --floor adds a check, it replaces nothing).
DEFAULT_FLOORS: tuple[tuple[str, float], ...] = ()


def parse_floor(text: str) -> tuple[str, float]:
    """``metric=value`` -> (metric, value)."""
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected metric=value, got {text!r}") from None
    if not name.strip() or number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"expected metric=value with a finite value, got {text!r}")
    return name.strip(), number


@dataclass(frozen=True)
class TrainResult:
    version: str  # the candidate the gate measures next
    metrics: dict[str, Any]  # best epoch's eval metrics
    model_dir: str


@dataclass(frozen=True)
class GateSettings:
    workdir: str = field(metadata=WORKDIR)
    # Its date is the candidate's training date (read from its config.json).
    candidate: str = field(metadata=doc("model VERSION under WORKDIR/models/ to measure"))
    # 0.0: an equally good candidate is promoted (it was trained on fresher data).
    margin: float = field(
        default=0.0, metadata=doc(f"{SELECTION_METRIC} gain over the published model required")
    )
    # Metrics are measured on a few hundred images: a 2-point wobble is noise, not a regression.
    tolerance: float = field(
        default=0.02, metadata=doc("largest drop of any other metric that still promotes")
    )
    # A first model must beat the best same-run baseline (an untrained network of its own
    # architecture, a colour histogram) by this much on each of BASELINE_METRICS, or by two
    # binomial standard errors of the baseline when the eval set is small (models/baselines.py).
    baseline_margin: float = field(
        default=0.05, metadata=doc("gain a first model needs over the best same-run baseline")
    )
    beat_baselines: bool = field(
        default=True,
        metadata=doc("judge a first model against the same-run baselines (off: floors only)"),
    )
    floors: tuple[tuple[str, float], ...] = field(
        default=DEFAULT_FLOORS,
        metadata=doc(
            "metric=value every candidate must also reach, repeatable (adds to the other rules)",
            flag="floor",
            parse=parse_floor,
            repeat=True,
        ),
    )
    batch_size: int = field(default=128, metadata=doc("images per serving call"))
    # Off by default: a human verdict needs people (or a demo's simulated rater) in the loop.
    # On: refuse unless a blind side-by-side against the published model (or, for a first model,
    # any rating of it) exists under WORKDIR/eval/ and the candidate does not lose it significantly.
    require_human_eval: bool = field(
        default=False,
        metadata=doc(
            "also require a rated blind side-by-side (vsearch eval-report) that the candidate "
            "does not lose significantly"
        ),
    )
    human_eval_alpha: float = field(
        default=0.05, metadata=doc("sign-test level for 'loses the side-by-side significantly'")
    )
    # Simulated ratings show the loop (tests, the demo); they are no verdict on a real model.
    allow_simulated_ratings: bool = field(
        default=False, metadata=doc("accept simulated ratings as the human verdict (demo only)")
    )


@dataclass(frozen=True)
class GateDecision:
    promoted: bool  # a promotion means the next embed re-embeds everything (--full)
    candidate: str
    published: str | None  # the version PUBLISHED held when the gate ran
    reasons: tuple[str, ...]
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    published_metrics: dict[str, float] = field(default_factory=dict)
    eval_date: str = ""
    # A first model's same-run baselines, measured on the same images: name -> metrics.
    baseline_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
