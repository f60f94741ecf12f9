"""The statistics of a human evaluation, pure and small: each checked against hand-computed values.

Grades are 2 (relevant), 1 (partly), 0 (not); with several raters a result's grade is their mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def precision_at_k(relevant: Sequence[float], k: int) -> float:
    """Mean of the top-k results' relevance (1 relevant, 0 not; with several raters, the share
    of raters who called it relevant, so a result two of three raters call relevant counts 2/3)."""
    top = list(relevant[:k])
    return float(sum(top) / len(top)) if top else 0.0


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain with gain = grade and discount log2(rank + 1)."""
    return float(sum(g / math.log2(i + 2) for i, g in enumerate(gains)))


def ndcg_at_k(grades: Sequence[float], k: int, missed: Sequence[float] = ()) -> float:
    """DCG@k of the list over the DCG@k of the best ordering of every result known for the query.

    ``missed`` are the grades of results known for the query but not in this list's top k (the
    other model's results, a review photo's own listing): without them a list that missed the one
    relevant listing but ordered what it found well would score 1. 0 when nothing known is
    relevant.
    """
    top = list(grades[:k])
    ideal = dcg(sorted([*top, *missed], reverse=True)[:k])
    return dcg(top) / ideal if ideal > 0 else 0.0


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = lambda a: float(np.mean(a)),
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (queries resampled)."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    stats = np.array([statistic(a[row]) for row in idx])
    alpha = (1.0 - confidence) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial (sign) test p-value of wins vs losses under p = 1/2; ties dropped."""
    n = wins + losses
    if n == 0:
        return 1.0
    low = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


def cohen_kappa(a: Sequence[int], b: Sequence[int], categories: Sequence[int] = (0, 1, 2)) -> float:
    """Cohen's kappa of two raters' labels on the same items (1 agree fully, 0 chance level)."""
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in categories)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa; ``counts[item][category]`` = raters who chose that category for that item.

    Every item must have the same number of raters (items not rated by all are left out upstream).
    """
    m = np.asarray(counts, dtype=np.float64)
    if m.size == 0:
        return math.nan
    n_items = m.shape[0]
    raters = m.sum(axis=1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of raters on every item")
    r = raters[0]
    p_j = m.sum(axis=0) / (n_items * r)
    p_i = (np.sum(m * m, axis=1) - r) / (r * (r - 1))
    p_bar, p_e = float(p_i.mean()), float(np.sum(p_j * p_j))
    if p_e >= 1.0:
        return 1.0 if p_bar >= 1.0 else 0.0
    return (p_bar - p_e) / (1.0 - p_e)
