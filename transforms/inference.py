"""A Beam ModelHandler for the exported embedder SavedModel (``models.artifact``).

Elements are photos the pipeline already decoded safely (``core.images.decode_image``):
uint8 [S, S, 3] pixels. A batch is stacked and fed to the model's ``serving_pixels`` signature,
which returns ``embedding`` [N, D] float32 plus the category head: no re-encode, no second decode.
The embed job runs it through ``transforms/pipelined_inference.py`` (the next batch's call in
flight while this one's results are emitted); any runner of Beam ModelHandlers could run it. The
handler:

* loads the model once per worker process (kept in ``shared.Shared``, so every thread of a
  process uses one copy); with ``large_model=True`` one copy is shared by all processes of a
  machine (Beam's ``MultiProcessShared``), which is what a GPU worker with several SDK processes
  wants: one copy in GPU memory instead of one per process;
* copies a gs:// model to a local folder first, because TensorFlow's own filesystem layer does not
  know every object store (or the loopback test server) that our storage layer does;
* runs on a GPU when TensorFlow sees one and on the CPU otherwise, with the same code (it only
  asks for memory growth so that several processes can share a GPU).

``unit_vectors`` is the postprocess step's arithmetic: a batch's vectors re-normalised, and each
photo's reason to reject its vector (NaN or inf values, zero norm).

Failures: a model call that raises fails its batch, and every photo of it becomes a dead letter
with the call's error; a rejected vector fails its photo alone (``pipelines/embed_job.py``).
The handler catches nothing and retries nothing one photo at a time: what can fail one photo
is its vector, never the call. Every photo reaches the model as sanitised uint8 pixels of one
shape, so a failing call is the batch's failure, not one photo's: a broken model fails every
photo again when retried alone, and a batch too large for memory is ``--max-batch-size``'s to
prevent. The run's bad-fraction check refuses to publish the day when they are more than a few.
The photo that spoils its vector (an all-black image's NaN) leaves alone and its batch mates are
embedded: that check runs per photo, after the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from core.runs import METRICS_NAMESPACE
from models.artifact import Embedder, ModelArtifactError

OUTPUT_KEYS = ("embedding", "category", "category_score")
# Below this norm a vector has no direction worth normalising (the model output is all zeros).
MIN_NORM = 1e-6


@dataclass(frozen=True)
class Prediction:
    """The model outputs for one image (numpy, detached from TensorFlow)."""

    embedding: np.ndarray
    category: str
    category_score: float


class EmbedderModelHandler(ModelHandler[np.ndarray, PredictionResult, Embedder]):
    """uint8 pixels [S, S, 3] -> PredictionResult(inference=Prediction); a failed call raises."""

    def __init__(
        self,
        model_uri: str,
        *,
        min_batch_size: int = 8,
        max_batch_size: int = 64,
        large_model: bool = False,
        intra_op_threads: int = 0,
    ) -> None:
        # min/max bound BatchElements, which then adapts the batch size to measured throughput.
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size, large_model=large_model
        )
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"need 1 <= min_batch_size <= max_batch_size, got {min_batch_size}, {max_batch_size}"
            )
        self._model_uri = model_uri
        self._intra_op_threads = intra_op_threads

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
        # No try: a failed call fails its batch, which the caller dead-letters (module docstring).
        predictions = _predict(model, batch)
        return [PredictionResult(x, p) for x, p in zip(batch, predictions, strict=True)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        # The default pickles the whole batch just to measure it.
        return sum(int(x.nbytes) for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def unit_vectors(vectors: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A batch's vectors [N, D] re-normalised in float64, so that norms are 1 to float32
    precision whatever the model, and each row's rejection reason ("" when usable): NaN or inf
    values, or zero norm (the photo goes to ``failed_postprocessing``, its batch mates do not)."""
    v = vectors.astype(np.float64)
    finite: np.ndarray = np.all(np.isfinite(v), axis=1)
    v[~finite] = 0.0  # rejected below; zeroed so that the arithmetic stays finite
    norms = np.linalg.norm(v, axis=1)
    reasons = [""] * len(v)
    for i in np.flatnonzero(norms < MIN_NORM):
        reasons[i] = "embedding has zero norm"
    for i in np.flatnonzero(~finite):
        reasons[i] = "embedding has NaN or inf values"
    unit = v / np.maximum(norms, MIN_NORM)[:, None]
    return unit.astype(np.float32), reasons


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


def _configure_tensorflow(tf: Any, intra_op_threads: int) -> None:
    """Thread counts and GPU memory growth; only possible before TF's runtime starts."""
    try:
        if intra_op_threads > 0:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            # At least 2: two calls in flight (pipelined_inference) run their ops through this
            # pool, and with one thread they would take turns.
            tf.config.threading.set_inter_op_parallelism_threads(max(2, intra_op_threads // 2))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # the runtime already started in this process: keep its settings
        pass
