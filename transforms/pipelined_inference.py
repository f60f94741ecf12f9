"""PipelinedInference: a Beam ModelHandler's batches run with the next batch's call in flight.

Why not ``RunInference``: its DoFn makes one synchronous model call per batch, and in a fused
stage the bundle's one thread also runs every step around it. So the model idles while that
thread gathers the next batch (reads, decodes, Beam's per-photo steps), and those steps idle
while the model runs. On 2 cores the embed job reached 0.80 of the CPU ceiling that way
(BENCHMARKS.md, "Embed job"); a loop that keeps a call in flight while it gathers the next batch
reaches ~0.97 on the same machine. Here the call runs in a pool thread (TensorFlow releases the
GIL), ``calls_in_flight`` at a time, and the bundle's thread goes on gathering
(``transforms/lookahead.py``).

What stays RunInference's: the ModelHandler interface (``load_model``, ``run_inference``,
``batch_elements_kwargs``, ``share_model_across_processes``), so any Beam handler runs here; the
model loaded once per process (``shared.Shared``) or once per machine
(``MultiProcessShared``, for GPU workers); batching by ``BatchElements`` with the handler's
bounds. Elements are (key, example); outputs are tagged:

* main: what ``postprocess`` makes of a batch's (key, PredictionResult) pairs: one element per
  batch (the embed job's Arrow table of rows: no Beam step per photo after the model), or one
  per element with ``each(fn)``;
* ``failed_calls``: (key, repr of the error) for every element of a batch whose call raised;
* ``failed_postprocessing``: (key, reason) for an element ``postprocess`` rejected (with
  ``each``: the repr of what ``fn`` raised for it).

With ``batched=True`` the input is already batches (lists of (key, example), e.g. photos batched
before their read so that no step runs per photo), and the handler's batching is skipped.

Distributions in the handler's metrics namespace: ``batch_size``, ``inference_ms`` (per call)
and ``load_model_latency_milli_secs`` (per load, as RunInference names it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils import multi_process_shared, shared

from transforms.lookahead import LookaheadDoFn

FAILED_CALLS = "failed_calls"
FAILED_POSTPROCESSING = "failed_postprocessing"


Pairs = Sequence[tuple[Any, PredictionResult]]


class Postprocessed(NamedTuple):
    """What a batch's postprocess made: main outputs, and the elements it rejected."""

    outputs: Iterable[Any]
    rejected: Sequence[tuple[Any, str]]  # (key, reason)


BatchPostprocess = Callable[[Pairs], Postprocessed]


def each(fn: Callable[[tuple[Any, PredictionResult]], Any]) -> BatchPostprocess:
    """A per-element postprocess as a batch's: one output per element; an element whose ``fn``
    raises is rejected with the exception's repr as its reason."""

    def batch(pairs: Pairs) -> Postprocessed:
        outputs: list[Any] = []
        rejected: list[tuple[Any, str]] = []
        for pair in pairs:
            try:
                outputs.append(fn(pair))
            except Exception as e:  # this element's, routed to FAILED_POSTPROCESSING
                rejected.append((pair[0], repr(e)))
        return Postprocessed(outputs, rejected)

    return batch


class _Called(NamedTuple):
    """A batch's call: its predictions in batch order, or the error it raised; its time."""

    predictions: Sequence[Any] | None
    error: Exception | None
    ms: int


class _InferBatches(LookaheadDoFn):
    """[(key, example)] batches -> per-element outputs, ``calls_in_flight`` calls at a time."""

    def __init__(
        self,
        handler: ModelHandler[Any, Any, Any],
        postprocess: BatchPostprocess,
        calls_in_flight: int,
        model_tag: str,
    ) -> None:
        # One batch waits while the others run: the bundle's thread emits the oldest result
        # only once `calls_in_flight` batches are out, so the model never waits for it.
        super().__init__(threads=calls_in_flight, lookahead=calls_in_flight - 1)
        self._handler = handler
        self._postprocess = postprocess
        self._tag = model_tag
        self._shared = shared.Shared()

    def setup(self) -> None:
        super().setup()
        namespace = self._handler.get_metrics_namespace()
        distribution = beam.metrics.Metrics.distribution
        self._batch_size = distribution(namespace, "batch_size")
        self._inference_ms = distribution(namespace, "inference_ms")
        self._load_ms = distribution(namespace, "load_model_latency_milli_secs")
        loaded: list[int] = []

        def load() -> Any:
            start = time.perf_counter()
            model = self._handler.load_model()
            loaded.append(int((time.perf_counter() - start) * 1000))
            return model

        if self._handler.share_model_across_processes():
            handle = multi_process_shared.MultiProcessShared(load, tag=self._tag, always_proxy=True)
            self._model = handle.acquire()
        else:
            self._model = self._shared.acquire(load, tag=self._tag)
        # Reported from the first bundle: Beam records metrics only inside a step's processing.
        self._loaded_ms = loaded[0] if loaded else None

    def work(self, batch: list[tuple[Any, Any]]) -> _Called:
        start = time.perf_counter()
        predictions: list[Any] | None = None
        error: Exception | None = None
        try:
            predictions = list(
                self._handler.run_inference([example for _, example in batch], self._model)
            )
        except Exception as e:  # the batch's failure, routed to FAILED_CALLS
            error = e
        ms = int((time.perf_counter() - start) * 1000)
        if predictions is not None and len(predictions) != len(batch):
            error = ValueError(f"model gave {len(predictions)} predictions for {len(batch)}")
            predictions = None
        return _Called(predictions, error, ms)

    def outputs(self, batch: list[tuple[Any, Any]], called: _Called) -> Iterator[Any]:
        if self._loaded_ms is not None:
            self._load_ms.update(self._loaded_ms)
            self._loaded_ms = None
        self._batch_size.update(len(batch))
        self._inference_ms.update(called.ms)
        if called.predictions is None:
            for key, _ in batch:
                yield beam.pvalue.TaggedOutput(FAILED_CALLS, (key, repr(called.error)))
            return
        pairs = [
            (key, p if isinstance(p, PredictionResult) else PredictionResult(example, p))
            for (key, example), p in zip(batch, called.predictions, strict=True)
        ]
        done = self._postprocess(pairs)
        yield from done.outputs
        for rejected in done.rejected:
            yield beam.pvalue.TaggedOutput(FAILED_POSTPROCESSING, rejected)


class PipelinedInference(beam.PTransform):
    """(key, example) -> tagged outputs (module docstring); ``postprocess`` maps a batch's
    (key, PredictionResult) pairs to main outputs and rejected elements (``each`` adapts a
    per-element function)."""

    def __init__(
        self,
        handler: ModelHandler[Any, Any, Any],
        postprocess: BatchPostprocess,
        *,
        model_tag: str,
        calls_in_flight: int = 2,
        batched: bool = False,
    ) -> None:
        super().__init__()
        if calls_in_flight < 1:
            raise ValueError(f"need calls_in_flight >= 1, got {calls_in_flight}")
        self._handler = handler
        self._postprocess = postprocess
        self._tag = model_tag
        self._calls = calls_in_flight
        self._batched = batched

    def expand(self, keyed: beam.PCollection) -> Any:
        batches = (
            keyed
            if self._batched
            else keyed | "Batch" >> beam.BatchElements(**self._handler.batch_elements_kwargs())
        )
        return batches | "Infer" >> beam.ParDo(
            _InferBatches(self._handler, self._postprocess, self._calls, self._tag)
        ).with_outputs(FAILED_CALLS, FAILED_POSTPROCESSING, main="predictions")
