"""Baselines measured in the same run, on the same eval images, as the model they judge.

A first model has no published model to beat, and absolute floors tuned to one generated catalog
refuse good models on another. So the gate compares a first model with what any catalog gives for
free: a colour histogram (a classic, training-free image descriptor) and the same network at random
initialisation (what the architecture does before learning anything).
"""

from __future__ import annotations

import numpy as np


def colour_histogram(rgb: np.ndarray, bins: int = 8) -> np.ndarray:
    """[N, H, W, 3] uint8 pixels -> [N, bins**3] Hellinger-normalised RGB histograms (L2 norm 1)."""
    q = np.asarray(rgb, np.int64) * bins // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    idx = idx.reshape(len(idx), -1) + (np.arange(len(idx)) * bins**3)[:, None]
    counts = np.bincount(idx.ravel(), minlength=len(rgb) * bins**3).reshape(len(rgb), bins**3)
    out = np.sqrt(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def required_gain(baseline: float, queries: int, min_margin: float) -> float:
    """How far above a baseline a metric must be: a fixed margin, or two binomial standard errors
    of the baseline's own figure when the eval set is too small for that margin to mean anything."""
    se = float(np.sqrt(max(baseline * (1 - baseline), 1e-12) / max(queries, 1)))
    return max(min_margin, 2.0 * se)
