"""What the model is measured on: the metric that picks the best epoch and promotes a model, and
what a shopper gets from each metric (the gate's reasons name capabilities, not only numbers)."""

from __future__ import annotations

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
