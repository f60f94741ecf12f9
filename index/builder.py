"""Build a sharded index: the steps of build-index, and the one driver that runs them in order.

1. scan: count, check and sample the input (``source.scan``; the Beam job samples in Beam);
2. train once on the sample: PCA (auto: by measured recall), then the index (auto: by trial);
3. add per shard and write each shard (``ShardWork``: in this process, or on Beam workers);
4. validate: exact ground truth of held-out queries, the search knob tuned on half of them,
   recall@10 and latency measured on the other half;
5. write ``manifest.json``, last, and only if recall@10 reaches the target.

The driver (``build``) holds only bounded things: the sample, the queries and their answers. The
passes over every vector are ``ShardWork``'s (index/shard_work.py), which is how one driver serves
both the in-process build (``build_index``) and the Beam job (pipelines/build_index_job.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import faiss
import numpy as np

from core import storage
from index import autofactory, autopca, ondisk, shard_plan, training, tuning
from index import factory as factory_mod
from index import manifest as manifest_mod
from index.build_settings import IndexSettings
from index.checksums import default_cache_dir
from index.recall import QuerySet, latency_ms
from index.searcher import Searcher
from index.shard_work import InProcess, ShardWork
from index.source import BatchesFactory, IndexBuildError, Sample, scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    manifest: manifest_mod.Manifest
    manifest_uri: str
    report: dict[str, Any] = field(default_factory=dict)


def build_index(
    batches_factory: BatchesFactory,
    settings: IndexSettings,
    build_dir: str,
    model_version: str,
    build_id: str,
    *,
    extra_queries: np.ndarray | None = None,
    cache_dir: str | None = None,
) -> BuildResult:
    """The whole build in this process: scan ``batches_factory``'s input, then ``build``.

    ``batches_factory`` returns a fresh iterator of embedding RecordBatches each call, one call
    per pass (listing_id, image_uri, image_index, embedding, category_pred), so nothing needs all
    vectors in memory at once.
    """
    sample = scan(
        batches_factory,
        settings.max_train_size,
        settings.validation_queries,
        settings.seed,
        model_version,
    )
    work = InProcess(batches_factory, one_per_pass=settings.on_disk)
    return build(
        sample,
        work,
        settings,
        build_dir,
        model_version,
        build_id,
        extra_queries=extra_queries,
        cache_dir=cache_dir,
    )


def build(
    sample: Sample,
    work: ShardWork,
    settings: IndexSettings,
    build_dir: str,
    model_version: str,
    build_id: str,
    *,
    extra_queries: np.ndarray | None = None,
    cache_dir: str | None = None,
) -> BuildResult:
    """Train, add per shard, validate; write ``manifest.json`` last and only if validation passes.

    ``extra_queries`` are more validation queries in the input space (e.g. review-photo
    embeddings). Raises IndexBuildError when the input is bad or recall@10 stays below
    ``settings.target_recall``.
    """
    report: dict[str, Any] = {}
    queries = validation_queries(sample, extra_queries)
    trained = train(sample, queries, settings, report)
    draft = add(trained, sample, work, settings, build_dir, (model_version, build_id), cache_dir)
    final = validate(draft, trained, queries, work, settings, build_dir, cache_dir, report)
    return BuildResult(final, write_manifest(final, build_dir), report)


# ------------------------------------------------------------------ the queries


@dataclass(frozen=True)
class Queries:
    """Validation queries of two kinds, each split in halves: the first tunes, the second
    validates. "database": held-out database vectors (leave-one-out: finding themselves does not
    count); "outside": queries from outside the database (review photos, extra queries), which
    are what shoppers send. Kinds without queries are left out."""

    groups: dict[str, tuple[np.ndarray, np.ndarray]]  # kind -> (vectors, each one's own key)

    def vectors(self) -> np.ndarray:
        return np.concatenate([v for v, _ in self.groups.values()])

    def tune_vectors(self) -> np.ndarray:
        return np.concatenate([v[: _half(v)] for v, _ in self.groups.values()])

    def sets(self, truth: np.ndarray) -> tuple[list[QuerySet], list[QuerySet]]:
        """(tune, validate) sets, ``truth`` being the exact answers of ``vectors()`` in order."""
        tune, val, at = [], [], 0
        for name, (v, own) in self.groups.items():
            h = _half(v)
            tune.append(QuerySet(name, v[:h], own[:h], truth[at : at + h]))
            val.append(QuerySet(name, v[h:], own[h:], truth[at + h : at + len(v)]))
            at += len(v)
        return tune, [q for q in val if len(q)] or tune  # tiny inputs: validate on all


def _half(x: np.ndarray) -> int:
    return (len(x) + 1) // 2


def validation_queries(sample: Sample, extra_queries: np.ndarray | None) -> Queries:
    extra = [sample.review_queries]
    if extra_queries is not None and len(extra_queries):
        eq = np.asarray(extra_queries, dtype=np.float32)
        if eq.ndim != 2 or eq.shape[1] != sample.input_dim:
            raise IndexBuildError(f"extra queries must be [n, {sample.input_dim}], got {eq.shape}")
        extra.append(training.normalize_rows(eq))
    outside = np.concatenate(extra)
    groups = {
        "database": (sample.queries, sample.query_keys),
        "outside": (outside, np.full(len(outside), "", dtype=object)),
    }
    return Queries({g: v for g, v in groups.items() if len(v[0])})


# ------------------------------------------------------------------ 2. train


@dataclass(frozen=True)
class Trained:
    pca: faiss.VectorTransform | None  # None: the index keeps the input dimension
    pca_choice: autopca.PcaChoice | None  # what auto-PCA measured (None: --pca-dim given)
    dim: int
    factory: str
    index: faiss.Index  # trained, empty: every shard starts as a copy


def train(
    sample: Sample, queries: Queries, settings: IndexSettings, report: dict[str, Any]
) -> Trained:
    """PCA, chosen by measured recall (auto) and trained once on the sample; then the index
    (chosen by trial when auto), trained once on the PCA'd sample."""
    input_dim, tune_q = sample.input_dim, queries.tune_vectors()
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
    factory, choice = autofactory.choose_factory(
        settings, sample.ntotal, train_x, training.apply_pca(pca, tune_q), dim
    )
    report.update(choice)
    n_train = factory_mod.training_size(factory, len(train_x), settings.max_train_size)
    index = training.train_index(factory, train_x[:n_train], settings.use_gpu)
    log.info("trained %s on %d vectors (dim %d -> %d)", factory, n_train, input_dim, dim)
    return Trained(pca, pca_choice, dim, factory, index)


# ------------------------------------------------------------------ 3. add


def add(
    trained: Trained,
    sample: Sample,
    work: ShardWork,
    settings: IndexSettings,
    build_dir: str,
    key: tuple[str, str],
    cache_dir: str | None,
) -> manifest_mod.Manifest:
    """Write pca.bin, fill and write every shard (``work``), merge them on disk for an
    ``on_disk`` build; returns the manifest so far (not validated, not written)."""
    model_version, build_id = key
    pca_bytes = training.pca_to_bytes(trained.pca)
    if trained.pca is not None:
        storage.write_bytes(storage.join(build_dir, shard_plan.PCA_FILE), pca_bytes)
    trained_bytes = training.index_to_bytes(trained.index)
    entries = work.add_shards(trained_bytes, pca_bytes, build_dir, settings.shards)
    ntotal = sum(e.ntotal for e in entries)
    if ntotal != sample.ntotal:
        raise IndexBuildError(f"shards hold {ntotal} vectors but the input has {sample.ntotal}")
    merged = None
    if settings.on_disk:
        log.info("merging %d shards on disk into %s", len(entries), ondisk.MERGED_LISTS)
        merged = ondisk.merge_build(build_dir, entries, cache_dir or default_cache_dir(), key)
    return manifest_mod.Manifest(
        model_version=model_version,
        build_id=build_id,
        created_at=manifest_mod.utc_now_iso(),
        input_dim=sample.input_dim,
        dim=trained.dim,
        factory=trained.factory,
        shards=tuple(entries),
        ntotal=ntotal,
        pca_sha256=hashlib.sha256(pca_bytes).hexdigest() if trained.pca is not None else None,
        merged=merged,
        format_version=(
            manifest_mod.ON_DISK_FORMAT_VERSION if merged else manifest_mod.FORMAT_VERSION
        ),
    )


# ------------------------------------------------------------------ 4. validate


def validate(
    draft: manifest_mod.Manifest,
    trained: Trained,
    queries: Queries,
    work: ShardWork,
    settings: IndexSettings,
    build_dir: str,
    cache_dir: str | None,
    report: dict[str, Any],
) -> manifest_mod.Manifest:
    """Tune the search knob on the tuning queries, measure recall@10 and latency on the others;
    the manifest with both, or IndexBuildError (naming the likely cause) below the target."""
    all_q = queries.vectors()
    # k=11: one more than recall@10 needs, since a database query's own row is dropped.
    tune_sets, val_sets = queries.sets(work.ground_truth(all_q, 11))
    factory = draft.factory
    with Searcher(draft, build_dir, cache_dir=cache_dir) as searcher:

        def recall(q: QuerySet, params: dict[str, int]) -> float:
            return q.recall(lambda x, k: searcher.search_keys(x, k, params))

        def latency(sets: list[QuerySet], params: dict[str, int]) -> tuple[float, float]:
            timed = np.concatenate([q.vectors for q in sets])[: settings.latency_queries]
            return latency_ms(lambda q: searcher.search_raw(q, 10, params), timed)

        tuned = tuning.tune(
            factory,
            # the lowest recall over the query kinds: each kind must reach the target
            lambda params: min(recall(q, params) for q in tune_sets),
            min(1.0, settings.target_recall + settings.tune_margin),
            latency=lambda params: latency(tune_sets, params)[0],
        )
        report["tuning"] = {
            "params": tuned.search_params,
            "recall": tuned.recall_at_10,
            "tried": tuned.tried,
        }
        per_kind = {q.name: recall(q, tuned.search_params) for q in val_sets}
        report["validation_by_kind"] = per_kind
        p50, p99 = latency(val_sets, tuned.search_params)
    recall_10 = min(per_kind.values())
    n_val = sum(len(q) for q in val_sets)
    validation = manifest_mod.Validation(round(recall_10, 5), n_val, round(p50, 4), round(p99, 4))
    report["validation"] = validation
    if recall_10 < settings.target_recall:
        raise IndexBuildError(
            f"index {factory} (dim {draft.input_dim}->{draft.dim}) with "
            f"{tuned.search_params or 'exact search'} reaches recall@10 {recall_10:.4f} on "
            f"held-out queries ({per_kind}), below the target {settings.target_recall:.4f}; no "
            f"manifest was written. Tried {factory} knob values (value, recall): "
            f"{tuned.tried or 'exact'}. " + _cause(draft, trained.pca_choice, tuned.tried)
        )
    return replace(draft, search_params=tuned.search_params, validation=validation)


def _cause(
    draft: manifest_mod.Manifest,
    pca_choice: autopca.PcaChoice | None,
    tried: tuple[tuple[int, float], ...],
) -> str:
    """One sentence naming what kept the recall down, and what to change."""
    factory, dim, input_dim = draft.factory, draft.dim, draft.input_dim
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


# ------------------------------------------------------------------ 5. write the manifest


def write_manifest(final: manifest_mod.Manifest, build_dir: str) -> str:
    """The build's commit: ``manifest.json`` written last, so a build without one is unfinished."""
    uri = storage.join(build_dir, shard_plan.MANIFEST_FILE)
    manifest_mod.write(uri, final)
    return uri
