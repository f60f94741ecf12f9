"""A RunInference ModelHandler for the exported embedder SavedModel (``models.artifact``).

Elements are photos the pipeline already decoded safely (``core.images.decode_image``):
uint8 [S, S, 3] pixels. A batch is stacked and fed to the model's ``serving_pixels`` signature,
which returns ``embedding`` [N, D] float32 plus the category head: no re-encode, no second decode.
The handler:

* loads the model once per worker process (RunInference keeps it in ``shared.Shared``, so every
  thread of a process uses one copy); with ``large_model=True`` one copy is shared by all
  processes of a machine (Beam's ``MultiProcessShared``), which is what a GPU worker with several
  SDK processes wants: one copy in GPU memory instead of one per process;
* copies a gs:// model to a local folder first, because TensorFlow's own filesystem layer does not
  know every object store (or the loopback test server) that our storage layer does;
* runs on a GPU when TensorFlow sees one and on the CPU otherwise, with the same code (it only
  asks for memory growth so that several processes can share a GPU);
* can split a batch into ``concurrent_calls`` parts run at once (threads: TensorFlow releases the
  GIL while it runs): on a CPU one call does not keep every core busy, and two calls at once
  embed ~20% more photos per second on 2 cores (BENCHMARKS.md, embed);
* isolates failures: when a batch fails, each element is retried alone and the ones that still
  fail come back as ``InferenceFailure`` instead of taking their batch mates down with them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

from core.runs import METRICS_NAMESPACE
from models.artifact import Embedder, ModelArtifactError

OUTPUT_KEYS = ("embedding", "category", "category_score")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The model outputs for one image (numpy, detached from TensorFlow)."""

    embedding: np.ndarray
    category: str
    category_score: float


@dataclass(frozen=True)
class InferenceFailure:
    """An image the model could not run on, with the reason (goes to the dead letters)."""

    error: str


class EmbedderModelHandler(ModelHandler[np.ndarray, PredictionResult, Embedder]):
    """uint8 pixels [S, S, 3] -> PredictionResult(inference=Prediction | InferenceFailure)."""

    def __init__(
        self,
        model_uri: str,
        *,
        min_batch_size: int = 8,
        max_batch_size: int = 64,
        large_model: bool = False,
        intra_op_threads: int = 0,
        concurrent_calls: int = 1,
    ) -> None:
        # min/max bound BatchElements, which then adapts the batch size to measured throughput.
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size, large_model=large_model
        )
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"need 1 <= min_batch_size <= max_batch_size, got {min_batch_size}, {max_batch_size}"
            )
        if concurrent_calls < 1:
            raise ValueError(f"need concurrent_calls >= 1, got {concurrent_calls}")
        self._model_uri = model_uri
        self._intra_op_threads = intra_op_threads
        self._concurrent_calls = concurrent_calls

    def load_model(self) -> Embedder:
        import tensorflow as tf

        _configure_tensorflow(tf, self._intra_op_threads)
        model = Embedder.load(self._model_uri)
        if not model.has_pixel_signature():
            raise ModelArtifactError(
                f"SavedModel at {self._model_uri} has no pixel signature: re-export it with "
                "this version of `vsearch train`"
            )
        return model

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: Embedder,
        inference_args: Mapping[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        Metrics = beam.metrics.Metrics  # noqa: N806 - Beam's spelling
        Metrics.distribution(METRICS_NAMESPACE, "batch_size").update(len(batch))
        start = time.perf_counter()
        try:
            predictions: list[Prediction | InferenceFailure] = list(
                _predict_parts(model, batch, self._concurrent_calls)
            )
        except Exception as e:  # one bad element must not fail the batch: retry one by one
            _log.warning("batch of %d failed (%s); retrying one by one", len(batch), e)
            predictions = [_predict_one(model, x) for x in batch]
        Metrics.distribution(METRICS_NAMESPACE, "inference_ms").update(
            int((time.perf_counter() - start) * 1000)
        )
        return [PredictionResult(x, p) for x, p in zip(batch, predictions, strict=True)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(int(x.nbytes) for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def keyed_handler(model_uri: str, **kwargs: Any) -> KeyedModelHandler:
    """The handler RunInference gets: (key, uint8 pixels) in, (key, PredictionResult) out."""
    return KeyedModelHandler(EmbedderModelHandler(model_uri, **kwargs))


def _predict(model: Embedder, batch: Sequence[np.ndarray]) -> Iterable[Prediction]:
    out = model.embed_pixels(np.stack(batch))
    emb = out["embedding"]
    if emb.ndim != 2 or emb.shape[0] != len(batch):
        raise ValueError(f"model returned embedding of shape {emb.shape} for {len(batch)} images")
    n = len(batch)
    cats = out["category"] if "category" in out else np.full(n, b"", dtype=object)
    scores = out["category_score"] if "category_score" in out else np.full(n, np.nan)
    for i in range(n):
        c = cats[i]
        yield Prediction(
            embedding=emb[i].astype(np.float32, copy=False),
            category=c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c),
            category_score=float(scores[i]),
        )


_POOLS: dict[int, ThreadPoolExecutor] = {}  # per process: threads that make model calls
_POOLS_LOCK = threading.Lock()


def _predict_parts(model: Embedder, batch: Sequence[np.ndarray], parts: int) -> list[Prediction]:
    """``_predict`` on ``parts`` slices of the batch at once, in batch order."""
    n = len(batch)
    if parts <= 1 or n < 2 * parts:
        return list(_predict(model, batch))
    with _POOLS_LOCK:
        pool = _POOLS.get(parts) or _POOLS.setdefault(parts, ThreadPoolExecutor(parts))
    step = -(-n // parts)
    slices = [batch[i : i + step] for i in range(0, n, step)]
    return [p for ps in pool.map(lambda b: list(_predict(model, b)), slices) for p in ps]


def _predict_one(model: Embedder, x: np.ndarray) -> Prediction | InferenceFailure:
    try:
        return next(iter(_predict(model, [x])))
    except Exception as e:
        return InferenceFailure(f"inference failed: {type(e).__name__}: {str(e)[:500]}")


def _configure_tensorflow(tf: Any, intra_op_threads: int) -> None:
    """Thread counts and GPU memory growth; only possible before TF's runtime starts."""
    try:
        if intra_op_threads > 0:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, intra_op_threads // 2))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # the runtime already started in this process: keep its settings
        pass
