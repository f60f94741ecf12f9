"""Tune the search knob (nprobe for IVF, efSearch for HNSW) to reach a target recall@10.

Latency grows with the knob, so the cheapest value whose recall reaches the target is the one
with the lowest latency; the grid is walked upwards and stops there. Recall is measured on
held-out queries (not the ones the final validation uses), against exact search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss

from index import factory as factory_mod

# search params such as {"nprobe": 8} ({} for exact) -> recall@10 on the tuning queries
Measure = Callable[[dict[str, int]], float]
# search params -> the median time of one query (any unit, the same for every call)
Latency = Callable[[dict[str, int]], float]
LATENCY_ROUNDS = 3  # interleaved timings per setting: a shared machine's speed drifts


@dataclass(frozen=True)
class TuneResult:
    # {} for Flat, {"nprobe": n} (+ "k_factor", + "quantizer_efSearch") or {"efSearch": n}
    search_params: dict[str, int]
    recall_at_10: float
    reached: bool  # False: even the most expensive grid value is below the target
    tried: tuple[tuple[int, float], ...]  # (value, recall) in the order tried


def search_parameters(params: dict[str, int]) -> faiss.SearchParameters | None:
    """Per-call faiss parameters (thread-safe: nothing is set on the shared index)."""
    if not params:
        return None
    if "nprobe" in params:
        ivf: Any = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))  # type: ignore[call-arg]
        if "quantizer_efSearch" in params:  # an HNSW coarse quantizer's walk over the centroids
            walk = faiss.SearchParametersHNSW(efSearch=int(params["quantizer_efSearch"]))  # type: ignore[attr-defined]
            ivf.quantizer_params = walk
            ivf.keep = walk  # faiss holds a raw pointer: keep the Python object alive with it
        return ivf  # type: ignore[no-any-return]
    if "efSearch" in params:
        return faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))  # type: ignore[attr-defined]
    raise ValueError(f"unknown search params {params}")


def faiss_search_parameters(params: dict[str, int]) -> faiss.SearchParameters | None:
    """``search_parameters`` for a faiss index whose own refine step (IndexRefine) takes
    ``k_factor``; without one, the same as ``search_parameters``."""
    base = search_parameters({k: v for k, v in params.items() if k != "k_factor"})
    if "k_factor" not in params:
        return base
    refined: Any = faiss.IndexRefineSearchParameters(
        k_factor=int(params["k_factor"]),
        base_index_params=base,  # type: ignore[call-arg]
    )
    refined.keep = base  # faiss holds a raw pointer
    return refined  # type: ignore[no-any-return]


def tune(
    factory: str,
    measure: Measure,
    target_recall: float,
    max_value: int | None = None,
    latency: Latency | None = None,
) -> TuneResult:
    """The cheapest knob value whose measured recall reaches ``target_recall``.

    Layouts with a fixed setting beside the knob (the refined layout's k_factor) are tuned with
    each setting in turn (factory.fixed_search_params). Without ``latency`` the first setting
    that reaches the target is kept. With it, every setting is tuned and the fastest of those
    that reach it is kept: more candidates re-ranked let fewer lists be probed for the same
    recall, and which costs less depends on the list lengths and the machine (at 1M manifold
    vectors: k_factor 12 at nprobe 112 was 11% faster than 8 at 128, at equal recall).
    """
    best: TuneResult | None = None
    reached: list[TuneResult] = []
    for fixed in factory_mod.fixed_search_params(factory):
        result = _tune_knob(factory, measure, target_recall, max_value, fixed)
        if result.reached:
            reached.append(_lower_quantizer_effort(factory, measure, target_recall, result))
            if latency is None:
                break
        elif not reached and (best is None or result.recall_at_10 > best.recall_at_10):
            best = result
    if reached:
        return _fastest(reached, latency)
    assert best is not None
    return best


def _fastest(results: list[TuneResult], latency: Latency | None) -> TuneResult:
    """The result whose search params answer fastest (medians of interleaved timings)."""
    if len(results) == 1 or latency is None:
        return results[0]
    times: list[list[float]] = [[] for _ in results]
    for _ in range(LATENCY_ROUNDS):
        for timing, result in zip(times, results, strict=True):
            timing.append(latency(result.search_params))
    medians = [sorted(t)[len(t) // 2] for t in times]
    return results[medians.index(min(medians))]


def _lower_quantizer_effort(
    factory: str, measure: Measure, target_recall: float, result: TuneResult
) -> TuneResult:
    """An HNSW coarse quantizer walks fewer centroids while the target still holds.

    Probing a few lists, the graph walk over the centroids is a large part of a query (at 1M
    clustered, nprobe 1: ~33 of ~90 us); faiss walks max(efSearch, nprobe) of them, efSearch 16
    by default. The cheapest walk that keeps the target is kept (``quantizer_efSearch``).
    """
    for ef in factory_mod.quantizer_ef_grid(factory, result.search_params.get("nprobe", 0)):
        params = {**result.search_params, "quantizer_efSearch": ef}
        r = measure(params)
        if r >= target_recall:
            return TuneResult(params, r, True, result.tried)
    return result


def _tune_knob(
    factory: str,
    measure: Measure,
    target_recall: float,
    max_value: int | None,
    fixed: dict[str, int],
) -> TuneResult:
    name = factory_mod.search_param_name(factory)
    if name is None:
        r = measure({})
        return TuneResult({}, r, r >= target_recall, ())
    grid = factory_mod.param_grid(factory)
    if max_value is not None:
        grid = [v for v in grid if v <= max_value] or grid[:1]
    tried: list[tuple[int, float]] = []
    best = (grid[0], -1.0)
    prev: int | None = None
    knob = lambda value: {name: value, **fixed}  # noqa: E731
    for value in grid:
        r = measure(knob(value))
        tried.append((value, r))
        if r > best[1] + 1e-9:
            best = (value, r)
        if r >= target_recall:
            if prev is not None:  # the grid is coarse: land on the target, not past it
                value, r = _bisect(lambda v: measure(knob(v)), target_recall, prev, value, r, tried)
            return TuneResult(knob(value), r, True, tuple(tried))
        prev = value
        if len(tried) >= 4 and r <= tried[-4][1] + 1e-4:
            break  # recall has plateaued (e.g. PQ's ceiling): more probes only cost time
    return TuneResult(knob(best[0]), best[1], False, tuple(tried))


def _bisect(
    measure: Callable[[int], float],
    target: float,
    lo: int,
    hi: int,
    hi_recall: float,
    tried: list[tuple[int, float]],
) -> tuple[int, float]:
    """The smallest integer knob in (lo, hi] that reaches ``target`` (lo misses, hi reaches).

    Overshooting the target costs speed for recall nobody asked for (a grid step from 32 to 48
    is 50% more work); a few more measurements find the cheapest passing value.
    """
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = measure(mid)
        tried.append((mid, r))
        if r >= target:
            hi, hi_recall = mid, r
        else:
            lo = mid
    return hi, hi_recall
