"""Auto index choice: the cheapest layout that fits the memory budget and reaches the target.

The candidates come in order of preference from index/factory.py (a function of N, dim and the
budget). Each IVF candidate is kept only if a trial on the training sample reaches the target
recall probing at most its share of the lists (IVF-Flat 1/32 by default, the refined IVF 1/2);
the last candidate (HNSW32) needs no trial. Trials run at a small scale: an index of the same
recipe (factory.at_scale) over part of the sample, its knob tuned on held-out queries. What
fraction of the lists must be probed carries over across scales; a full-size trial would cost a
second full k-means.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from index import factory as factory_mod
from index import training, tuning
from index.build_settings import IndexSettings
from index.recall import exact_topk, recall_at_k

log = logging.getLogger(__name__)

REFINE_MAX_PROBE_FRACTION = 1 / 2  # the refined layout scans cheap 4-bit codes: it may probe more


def choose_factory(
    settings: IndexSettings, ntotal: int, train_x: np.ndarray, query_x: np.ndarray, dim: int
) -> tuple[str, dict[str, Any]]:
    """(factory, report): ``settings.factory`` as given, else the first candidate that passes its
    trial. ``train_x`` and ``query_x`` are in the index's (PCA'd) space; the queries are not in
    the sample."""
    if settings.factory != "auto":
        return settings.factory, {}
    if settings.on_disk:  # the lists live on disk, not in the RAM budget: exact codes
        return f"{factory_mod.ivf_prefix(ntotal)},Flat", {"on_disk": True}
    candidates = factory_mod.candidate_factories(ntotal, dim, settings.memory_budget_bytes)
    trials: list[dict[str, Any]] = []
    info: dict[str, Any] = {"candidates": candidates, "trials": trials}
    limits = {"ivf_flat": settings.ivf_max_probe_fraction, "ivf_refine": REFINE_MAX_PROBE_FRACTION}
    if len(candidates) == 1 or len(query_x) == 0:
        return candidates[0], info
    data = train_x[: settings.trial_size]
    keys = np.arange(len(data)).astype(str).astype(object)
    truth = exact_topk(query_x, [(data, keys)], 10).keys
    for factory in candidates:
        kind = factory_mod.factory_kind(factory)
        if kind not in limits or factory is candidates[-1]:
            return factory, info  # nothing to try (HNSW32, the last resort)
        trial_factory = factory_mod.at_scale(factory, len(data))
        limit = max(1, int(factory_mod.ivf_nlist(trial_factory) * limits[kind]))
        t = _trial(trial_factory, data, query_x, truth, settings, limit)
        trials.append(
            {
                "factory": trial_factory,
                "vectors": len(data),
                "reached": t.reached,
                "tried": t.tried,
                "max_nprobe": limit,
            }
        )
        log.info("auto index trial: %s reached=%s within nprobe<=%d", factory, t.reached, limit)
        if t.reached:
            return factory, info
    return candidates[-1], info


def _trial(
    factory: str,
    data: np.ndarray,
    query_x: np.ndarray,
    truth: np.ndarray,
    settings: IndexSettings,
    limit: int,
) -> tuning.TuneResult:
    """Tune ``factory`` built over ``data`` against ``truth``, probing at most ``limit`` lists."""
    trial = training.train_index(factory, data, settings.use_gpu)
    trial.add(data)  # row ids: faiss' own refine step can look them up

    def measure(params: dict[str, int]) -> float:
        _, i = trial.search(query_x, 10, params=tuning.faiss_search_parameters(params))
        return recall_at_k(np.where(i >= 0, i.astype(str), "").astype(object), truth)

    return tuning.tune(factory, measure, settings.target_recall, max_value=limit)
