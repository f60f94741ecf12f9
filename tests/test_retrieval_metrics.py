"""Shopper-view retrieval metrics on hand-built embeddings whose answers are known."""

from __future__ import annotations

import numpy as np

from models.baselines import colour_histogram, required_gain
from models.retrieval_metrics import shopper_metrics


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_training_listing_that_looks_alike_costs_whole_catalog_recall() -> None:
    # Listings: A (held out), B (held out), T (training, a near twin of A's review photo).
    emb = _unit(
        [1, 0, 0],  # A listing photo
        [0, 1, 0],  # B listing photo
        [0.9, 0.1, 0.3],  # T listing photo (training listing)
        [0.8, 0.1, 0.35],  # review of A: nearer to T than to A
        [0.1, 1, 0],  # review of B: finds B
    )
    ids = np.array(["A", "B", "T", "A", "B"])
    is_review = np.array([0, 0, 0, 1, 1], bool)
    held_out = np.array([1, 1, 0, 1, 1], bool)
    labels = {"category": np.array([0, 1, 0, 0, 1]), "color": np.array([-1, -1, -1, -1, -1])}
    m = shopper_metrics(emb, ids, is_review, held_out, labels, k=2)
    # Held-out gallery (A, B): both reviews find their listing first.
    assert m["heldout_review_recall_at_1"] == 1.0
    # Whole catalog: A's review finds T first, so recall@1 halves; at k=2 A is found again.
    assert m["review_recall_at_1"] == 0.5 and m["review_recall_at_2"] == 1.0
    assert m["gallery_listings"] == 3 and m["eval_reviews"] == 2
    # Whole catalog, 2 nearest other listings: A sees B (other) and T (same): 1/2; B sees A and T,
    # both of another category: 0/2. Held-out gallery: A and B only see each other: 0.
    assert m["category_precision_at_2"] == 0.25
    assert m["heldout_category_precision_at_2"] == 0.0
    assert "color_precision_at_2" in m


def test_colour_histogram_separates_colours_not_positions() -> None:
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 200
    red_shifted = red.copy()
    red_shifted[:, :2] = 0  # a black band: mostly red still
    blue = np.zeros((1, 8, 8, 3), np.uint8)
    blue[..., 2] = 200
    h = colour_histogram(np.concatenate([red, red_shifted, blue]))
    assert np.allclose(np.linalg.norm(h, axis=1), 1.0)
    assert h[0] @ h[1] > 0.8 > 0.1 > h[0] @ h[2]


def test_required_gain_grows_when_the_eval_set_is_small() -> None:
    assert required_gain(0.1, 10_000, 0.05) == 0.05
    assert required_gain(0.5, 20, 0.05) > 0.2


def test_training_buyer_photos_are_measured_apart_and_never_join_the_gallery() -> None:
    emb = _unit(
        [1, 0, 0],  # A listing photo (held out)
        [0, 1, 0],  # T listing photo (training listing)
        [0, 0.2, 1],  # review of T: nearer to nothing, but T is still its best listing
        [1, 0.1, 0],  # review of A
        [0, 0.1, 1],  # another review of T: the twin of the first: must not be found as a listing
    )
    ids = np.array(["A", "T", "T", "A", "T"])
    is_review = np.array([0, 0, 1, 1, 1], bool)
    held_out = np.array([1, 0, 0, 1, 0], bool)
    labels = {"category": np.zeros(5, int), "color": np.full(5, -1)}
    m = shopper_metrics(emb, ids, is_review, held_out, labels, k=1)
    assert m["trained_review_recall_at_1"] == 1.0  # both training reviews find T
    assert m["review_recall_at_1"] == 1.0 and m["eval_reviews"] == 1  # only A's review
    assert m["gallery_listings"] == 2  # A and T: review photos are never gallery items
