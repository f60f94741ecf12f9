"""The statistics of the human evaluation, against values computed by hand (or textbook tables)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsearch.evaluation import stats


def test_precision_is_the_mean_relevance_of_the_top_k() -> None:
    assert stats.precision_at_k([1, 0, 1, 0.5, 1], 4) == pytest.approx(2.5 / 4)
    assert stats.precision_at_k([], 10) == 0.0


def test_dcg_and_ndcg_by_hand() -> None:
    # 2/log2(2) + 1/log2(3) + 0/log2(4)
    assert stats.dcg([2, 1, 0]) == pytest.approx(2 + 1 / math.log2(3))
    # Reversed order: (0 + 1/log2(3) + 2/log2(4)) / (2 + 1/log2(3)) = 0.619906
    assert stats.ndcg_at_k([0, 1, 2], 3) == pytest.approx(0.619906, abs=1e-6)
    assert stats.ndcg_at_k([2, 1, 0], 3) == pytest.approx(1.0)
    assert stats.ndcg_at_k([0, 0, 0], 3) == 0.0
    # Only the top k count: the relevant 4th result is beyond k=3.
    assert stats.ndcg_at_k([0, 0, 0, 2], 3) == 0.0


def test_ndcg_ideal_counts_what_the_list_missed() -> None:
    # Three partly results, and a relevant listing known for the query but not in the list:
    # (1 + 1/log2(3) + 1/2) / (2 + 1/log2(3) + 1/2) = 0.680606, not 1.
    assert stats.ndcg_at_k([1, 1, 1], 3, missed=[2]) == pytest.approx(0.680606, abs=1e-6)
    assert stats.ndcg_at_k([2, 2, 2], 3, missed=[2]) == pytest.approx(1.0)  # nothing better
    assert stats.ndcg_at_k([0, 0, 0], 3, missed=[2]) == 0.0
    # Results missed but rated "not" change nothing: (2 / log2(3)) / 2.
    assert stats.ndcg_at_k([0, 2], 2, missed=[0, 0]) == pytest.approx(1 / math.log2(3))


def test_sign_test_exact_binomial() -> None:
    assert stats.sign_test(0, 5) == pytest.approx(2 / 32)  # 0.0625: five losses are not enough
    assert stats.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)  # 0.02148
    assert stats.sign_test(1, 9) == stats.sign_test(9, 1)
    assert stats.sign_test(5, 5) == 1.0
    assert stats.sign_test(0, 0) == 1.0


def test_cohen_kappa_textbook_example() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.7, pe 0.5, kappa 0.4.
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert stats.cohen_kappa(a, b, categories=(0, 1)) == pytest.approx(0.4)
    # Three grades: agree on 4 of 6, uniform marginals -> pe 1/3 -> kappa 0.5.
    assert stats.cohen_kappa([2, 2, 1, 0, 0, 1], [2, 1, 1, 0, 0, 2]) == pytest.approx(0.5)
    assert stats.cohen_kappa([2, 1, 0], [2, 1, 0]) == pytest.approx(1.0)


def test_fleiss_kappa_wikipedia_table() -> None:
    # The 10 items x 5 categories, 14 raters table of Fleiss' kappa's Wikipedia article: 0.210.
    counts = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert stats.fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-4)
    with pytest.raises(ValueError, match="same number"):
        stats.fleiss_kappa([[1, 1, 0], [1, 0, 0]])


def test_fleiss_equals_cohen_for_two_raters_with_equal_marginals() -> None:
    # Two raters, uniform marginals: Fleiss' and Cohen's expected agreement coincide.
    a, b = [2, 2, 1, 0, 0, 1], [2, 1, 1, 0, 0, 2]
    counts = [[int(x == c) + int(y == c) for c in (0, 1, 2)] for x, y in zip(a, b, strict=True)]
    assert stats.fleiss_kappa(counts) == pytest.approx(stats.cohen_kappa(a, b))


def test_bootstrap_interval() -> None:
    # Two values: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    assert stats.bootstrap_ci([0.0, 1.0], samples=4000) == (0.0, 1.0)
    assert stats.bootstrap_ci([0.3] * 20) == pytest.approx((0.3, 0.3))
    # 100 coin flips at 0.5: the normal approximation gives 0.5 +- 1.96 * 0.05.
    low, high = stats.bootstrap_ci([0.0, 1.0] * 50, samples=4000)
    assert low == pytest.approx(0.402, abs=0.03) and high == pytest.approx(0.598, abs=0.03)
    assert stats.bootstrap_ci([0.0, 1.0] * 50, seed=3) == stats.bootstrap_ci(
        [0.0, 1.0] * 50, seed=3
    )
    assert all(np.isnan(stats.bootstrap_ci([])))
