"""Build a sharded index from a stream of embedding RecordBatches: the core of build-index.

Passes over the input (``batches_factory()`` is called once per pass, so nothing needs all vectors
in memory at once):

1. scan: count, check, and reservoir-sample training vectors and held-out queries;
2. train once on the sample: PCA, then the index (choose it first when ``factory="auto"``);
3. add per shard (in process here, or on Beam workers via ``add_shards``) and write each shard;
4. ground truth: exact top-10 of the queries, streamed over the database;
5. tune the search knob on half the queries, validate on the other half, and write the manifest
   only if recall@10 reaches the target.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core import storage
from core.settings import doc
from index import autopca, ondisk, shard_plan, training, tuning
from index import factory as factory_mod
from index import manifest as manifest_mod
from index.checksums import default_cache_dir
from index.recall import QuerySet, exact_topk, latency_ms, recall_at_k, row_keys
from index.searcher import Searcher
from index.shard_files import AddShards, add_shards_in_process
from index.source import BatchesFactory, IndexBuildError, Sample, iter_database, scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    factory: str = field(
        default="auto",
        metadata=doc(
            "faiss index_factory string (Flat, IVF4096,Flat, IVF4096,PQ32, "
            "IVF4096,PQ64x4fs,RFlat, HNSW32) or auto: the cheapest layout that fits "
            "--memory-budget and reaches --target-recall in a trial",
            metavar="FACTORY",
        ),
    )
    shards: int = field(default=1, metadata=doc("S; a listing's shard is a stable hash of its id"))
    target_recall: float = field(
        default=0.95,
        metadata=doc("recall@10 vs exact search that tuning must reach and validation confirm"),
    )
    memory_budget_bytes: int = field(
        default=16 << 30,
        metadata=doc(
            "bytes auto may spend on the whole index (all shards)",
            flag="memory-budget",
            metavar="BYTES",
        ),
    )
    pca_dim: int = field(
        default=0,
        metadata=doc(
            "dimension after PCA; 0: auto, the smallest multiple of 16 whose measured recall "
            "keeps half the target's allowed loss, or none (a cut saving under a quarter is not "
            "worth its cost)"
        ),
    )
    max_train_size: int = field(
        default=200_000,
        metadata=doc("training sample held in driver memory (~200 MB at D=256)"),
    )
    validation_queries: int = field(
        default=1000,
        metadata=doc("held-out database vectors used as queries (half tune, half validate)"),
    )
    tune_margin: float = field(
        default=0.005,
        metadata=doc("tune for target + margin, so validation's other queries pass too"),
    )
    latency_queries: int = field(default=300, metadata=doc("single queries timed for p50/p99"))
    ivf_max_probe_fraction: float = field(
        default=1 / 32,
        metadata=doc("auto: IVF-Flat must reach the target probing at most this share of lists"),
    )
    trial_size: int = field(default=50_000, metadata=doc("auto: sample vectors of the IVF trial"))
    seed: int = field(default=0, metadata=doc("seed of the samples"))
    use_gpu: bool | None = field(
        default=None, metadata=doc("k-means on GPU (default: when faiss sees one)")
    )
    # An index larger than RAM: shards filled one per pass, then merged into one index whose
    # lists are a file the searcher memory-maps (index/ondisk.py; manifest format 3).
    on_disk: bool = field(
        default=False,
        metadata=doc(
            "build an index larger than RAM: fill one shard at a time, merge the shards into "
            "merged.faiss + merged.ivfdata, serve the lists memory-mapped (plain IVF layouts)"
        ),
    )

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")
        if self.factory != "auto":
            factory_mod.factory_kind(self.factory)
            if self.on_disk:
                ondisk.check_layout(self.factory)


@dataclass(frozen=True)
class BuildResult:
    manifest: manifest_mod.Manifest
    manifest_uri: str
    report: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ the build


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = (len(x) + 1) // 2
    return x[:h], x[h:]


def _choose_factory(
    settings: IndexSettings, sample: Sample, train_x: np.ndarray, query_x: np.ndarray, dim: int
) -> tuple[str, dict[str, Any]]:
    """Explicit factory as given; for "auto", the candidates in order (index/factory.py), each
    IVF one kept only if a trial on the training sample reaches the target probing at most its
    share of the lists: IVF-Flat 1/32, the refined IVF 1/2; the last candidate (HNSW32) needs no
    trial. Returns (factory, report).
    """
    if settings.factory != "auto":
        return settings.factory, {}
    if settings.on_disk:  # the lists live on disk, not in the RAM budget: exact codes
        return f"{factory_mod.ivf_prefix(sample.ntotal)},Flat", {"on_disk": True}
    candidates = factory_mod.candidate_factories(sample.ntotal, dim, settings.memory_budget_bytes)
    trials: list[dict[str, Any]] = []
    info: dict[str, Any] = {"candidates": candidates, "trials": trials}
    limits = {"ivf_flat": settings.ivf_max_probe_fraction, "ivf_refine": 1 / 2}
    if len(candidates) == 1 or len(query_x) == 0:
        return candidates[0], info
    # Trials at a small scale: an index of the same recipe (factory.at_scale) over part of the
    # sample, its knob tuned on the held-out queries. What fraction of the lists must be probed
    # carries over across scales; a full-size trial would cost a second full k-means.
    data = train_x[: settings.trial_size]
    keys = np.arange(len(data)).astype(str).astype(object)
    truth = exact_topk(query_x, [(data, keys)], 10).keys  # the queries are not in the sample
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


GroundTruthFn = Callable[[np.ndarray, int], np.ndarray]  # (queries, k) -> exact top-k row keys


def streamed_ground_truth(batches_factory: BatchesFactory | None) -> GroundTruthFn:
    """Exact top-k in one streaming pass over the input (the single-process build)."""

    def run(queries: np.ndarray, k: int) -> np.ndarray:
        assert batches_factory is not None
        chunks = (
            (v, row_keys(b.column("listing_id").to_pylist(), b.column("image_index").to_pylist()))
            for b, v in iter_database(batches_factory)
        )
        return exact_topk(queries, chunks, k).keys

    return run


def _cause(
    factory: str,
    dim: int,
    input_dim: int,
    pca_choice: autopca.PcaChoice | None,
    tried: tuple[tuple[int, float], ...],
) -> str:
    """One sentence naming what kept the recall down, and what to change."""
    if dim < input_dim and pca_choice is None:
        return (
            f"Cause: --pca-dim {dim} discards neighbour information (exact search after the cut "
            f"cannot reach the target); use --pca-dim 0 (auto) or {input_dim} (none)."
        )
    if dim < input_dim and pca_choice is not None:
        return (
            f"Cause: likely the PCA cut ({pca_choice.describe()}): at full size neighbours are "
            f"denser than in the sample; rerun with --pca-dim {input_dim} (none)."
        )
    if factory_mod.factory_kind(factory) == "flat":
        return "Cause: exact search missed it, so the queries' own truth is inconsistent."
    return (
        f"Cause: {factory}'s search knob plateaued before the target (largest tried "
        f"{tried[-1][0] if tried else '-'}); use --factory HNSW32 or Flat, or a lower "
        "--target-recall."
    )


def build_index(
    batches_factory: BatchesFactory | None,
    settings: IndexSettings,
    build_dir: str,
    model_version: str,
    build_id: str,
    *,
    extra_queries: np.ndarray | None = None,
    add_shards: AddShards | None = None,
    cache_dir: str | None = None,
    sample: Sample | None = None,
    ground_truth: GroundTruthFn | None = None,
) -> BuildResult:
    """Train, add per shard, validate; write ``manifest.json`` last and only if validation passes.

    ``batches_factory`` returns a fresh iterator of embedding RecordBatches each call (listing_id,
    image_uri, image_index, embedding, category_pred). ``extra_queries`` are more validation
    queries in the input space (e.g. review-photo embeddings). Raises IndexBuildError when the
    input is bad or recall@10 stays below ``settings.target_recall``.

    A distributed caller (the Beam job) passes ``sample`` (a bounded sample it drew),
    ``add_shards`` and ``ground_truth`` (exact top-k keys of the queries, computed per shard)
    instead, and no ``batches_factory``: then the driver never reads the input itself.
    """
    report: dict[str, Any] = {}
    if batches_factory is None and (sample is None or add_shards is None or ground_truth is None):
        raise ValueError(
            "build_index needs batches_factory, or sample, add_shards and ground_truth"
        )
    if sample is None:
        assert batches_factory is not None
        sample = scan(
            batches_factory,
            settings.max_train_size,
            settings.validation_queries,
            settings.seed,
            model_version,
        )
    input_dim = sample.input_dim
    extra = [sample.review_queries]
    if extra_queries is not None and len(extra_queries):
        eq = np.asarray(extra_queries, dtype=np.float32)
        if eq.ndim != 2 or eq.shape[1] != input_dim:
            raise IndexBuildError(f"extra queries must be [n, {input_dim}], got {eq.shape}")
        extra.append(training.normalize_rows(eq))
    outside = np.concatenate(extra)
    # Two kinds of queries, each split in halves (tune / validate): held-out database vectors
    # (leave-one-out: finding themselves does not count) and queries from outside the database
    # (review photos, extra queries), which are what shoppers send.
    groups = {
        "database": (sample.queries, sample.query_keys),
        "outside": (outside, np.full(len(outside), "", dtype=object)),
    }
    groups = {g: v for g, v in groups.items() if len(v[0])}
    tune_q = np.concatenate([_split(v)[0] for v, _ in groups.values()])

    # 1. PCA, chosen by measured recall (auto) and trained once on the sample.
    pca_choice = None
    if settings.pca_dim:
        dim = settings.pca_dim
    else:
        pca_choice = autopca.choose_pca_dim(sample.train, tune_q, settings.target_recall)
        dim = pca_choice.dim
        report["pca"] = {"dim": dim, "required": pca_choice.required, "tried": pca_choice.tried}
        log.info("auto PCA: %d -> %d (%s)", input_dim, dim, pca_choice.describe())
    if dim > input_dim:
        raise IndexBuildError(f"--pca-dim {dim} exceeds the embedding dim {input_dim}")
    # No reduction -> no PCA: a full-dimension rotation preserves inner products but costs a
    # matrix product per vector, at build and at query time.
    pca = training.train_pca(sample.train, dim) if dim < input_dim else None
    train_x = training.apply_pca(pca, sample.train)

    # 2. The index, trained once on the sample.
    factory, choice = _choose_factory(
        settings, sample, train_x, training.apply_pca(pca, tune_q), dim
    )
    report.update(choice)
    n_train = factory_mod.training_size(factory, len(train_x), settings.max_train_size)
    trained = training.train_index(factory, train_x[:n_train], settings.use_gpu)
    log.info("trained %s on %d vectors (dim %d -> %d)", factory, n_train, input_dim, dim)

    # 3. Add per shard and write shards + id maps (+ the PCA).
    pca_bytes = training.pca_to_bytes(pca)
    if pca is not None:
        storage.write_bytes(storage.join(build_dir, shard_plan.PCA_FILE), pca_bytes)
    adder = add_shards or add_shards_in_process(
        batches_factory,  # type: ignore[arg-type]
        one_per_pass=settings.on_disk,
    )
    entries = adder(training.index_to_bytes(trained), pca_bytes, build_dir, settings.shards)
    ntotal = sum(e.ntotal for e in entries)
    if ntotal != sample.ntotal:
        raise IndexBuildError(f"shards hold {ntotal} vectors but the input has {sample.ntotal}")
    merged = None
    if settings.on_disk:
        log.info("merging %d shards on disk into %s", len(entries), ondisk.MERGED_LISTS)
        key = (model_version, build_id)
        merged = ondisk.merge_build(build_dir, entries, cache_dir or default_cache_dir(), key)
    draft = manifest_mod.Manifest(
        model_version=model_version,
        build_id=build_id,
        created_at=manifest_mod.utc_now_iso(),
        input_dim=input_dim,
        dim=dim,
        factory=factory,
        shards=tuple(entries),
        ntotal=ntotal,
        pca_sha256=hashlib.sha256(pca_bytes).hexdigest() if pca is not None else None,
        merged=merged,
        format_version=(
            manifest_mod.ON_DISK_FORMAT_VERSION if merged else manifest_mod.FORMAT_VERSION
        ),
    )

    # 4. Ground truth (exact, input space, one streaming pass), 5. tune, validate.
    all_q = np.concatenate([v for v, _ in groups.values()])
    # k=11: one more than recall@10 needs, since a database query's own row is dropped.
    truth = (ground_truth or streamed_ground_truth(batches_factory))(all_q, 11)
    tune_sets, val_sets, at = [], [], 0
    for name, (v, own) in groups.items():
        t_rows = slice(at, at + len(_split(v)[0]))
        v_rows = slice(t_rows.stop, at + len(v))
        tune_sets.append(QuerySet(name, all_q[t_rows], own[: len(_split(v)[0])], truth[t_rows]))
        val_sets.append(QuerySet(name, all_q[v_rows], own[len(_split(v)[0]) :], truth[v_rows]))
        at += len(v)
    val_sets = [q for q in val_sets if len(q)] or tune_sets  # tiny inputs: validate on all

    with Searcher(draft, build_dir, cache_dir=cache_dir) as searcher:

        def worst_recall(sets: list[QuerySet], params: dict[str, int]) -> float:
            """The lowest recall over the query kinds: each kind must reach the target."""
            return min(q.recall(lambda x, k: searcher.search_keys(x, k, params)) for q in sets)

        timed_tune = np.concatenate([q.vectors for q in tune_sets])[: settings.latency_queries]

        def p50_ms(params: dict[str, int]) -> float:
            return latency_ms(lambda q: searcher.search_raw(q, 10, params), timed_tune)[0]

        tuned = tuning.tune(
            factory,
            lambda params: worst_recall(tune_sets, params),
            min(1.0, settings.target_recall + settings.tune_margin),
            latency=p50_ms,
        )
        report["tuning"] = {
            "params": tuned.search_params,
            "recall": tuned.recall_at_10,
            "tried": tuned.tried,
        }
        per_kind = {
            q.name: q.recall(lambda x, k: searcher.search_keys(x, k, tuned.search_params))
            for q in val_sets
        }
        report["validation_by_kind"] = per_kind
        recall = min(per_kind.values())
        timed = np.concatenate([q.vectors for q in val_sets])[: settings.latency_queries]
        p50, p99 = latency_ms(lambda q: searcher.search_raw(q, 10, tuned.search_params), timed)
    n_val = sum(len(q) for q in val_sets)
    validation = manifest_mod.Validation(round(recall, 5), n_val, round(p50, 4), round(p99, 4))
    report["validation"] = validation
    if recall < settings.target_recall:
        raise IndexBuildError(
            f"index {factory} (dim {input_dim}->{dim}) with "
            f"{tuned.search_params or 'exact search'} reaches recall@10 {recall:.4f} on held-out "
            f"queries ({per_kind}), below the target {settings.target_recall:.4f}; no manifest "
            f"was written. Tried {factory} knob values (value, recall): {tuned.tried or 'exact'}. "
            + _cause(factory, dim, input_dim, pca_choice, tuned.tried)
        )
    final = replace(draft, search_params=tuned.search_params, validation=validation)
    uri = storage.join(build_dir, shard_plan.MANIFEST_FILE)
    manifest_mod.write(uri, final)
    return BuildResult(final, uri, report)
