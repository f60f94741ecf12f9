"""PipelinedInference on the real DirectRunner with a plain Beam ModelHandler: every element comes
out once with its own key's prediction, a failed call fails only its batch, a rejected
prediction only its element."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.testing.util import assert_that, equal_to

from transforms.pipelined_inference import (
    FAILED_CALLS,
    FAILED_POSTPROCESSING,
    PipelinedInference,
    each,
)

pytestmark = pytest.mark.timeout(120)


class _Model:
    """Loaded models are kept in Beam's ``shared.Shared``, which holds weak references."""

    factor = 2


class _Doubler(ModelHandler[int, int, _Model]):
    """A 'model' that doubles numbers; a batch holding 13 raises."""

    def __init__(self) -> None:
        super().__init__(min_batch_size=3, max_batch_size=3)

    def load_model(self) -> _Model:
        return _Model()

    def run_inference(
        self, batch: Sequence[int], model: _Model, inference_args: Any = None
    ) -> Iterable[int]:
        if 13 in batch:
            raise RuntimeError("unlucky batch")
        return [model.factor * x for x in batch]


def _postprocess(keyed: tuple[str, PredictionResult]) -> tuple[str, int]:
    key, result = keyed
    if result.example == 7:
        raise ValueError("seven is rejected")
    return key, result.inference


@pytest.mark.parametrize("calls_in_flight", [1, 2, 3])
def test_every_element_once_with_its_own_prediction_or_its_failure(calls_in_flight: int) -> None:
    numbers = list(range(20))
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions()) as p:
        out = (
            p
            | beam.Create([(f"k{x}", x) for x in numbers])
            | PipelinedInference(
                _Doubler(), each(_postprocess), model_tag="doubler", calls_in_flight=calls_in_flight
            )
        )
        failed_calls = out[FAILED_CALLS] | "FailedKeys" >> beam.Map(lambda kv: kv[0])
        rejected = out[FAILED_POSTPROCESSING]
        # The batch that held 13 failed whole; which others shared it depends on the batching,
        # so the check counts: every element is in exactly one of the three outputs.
        everything = (
            out.predictions | "OkKeys" >> beam.Map(lambda kv: kv[0]),
            failed_calls,
            rejected | "RejectedKeys" >> beam.Map(lambda kv: kv[0]),
        ) | beam.Flatten()
        assert_that(everything, equal_to([f"k{x}" for x in numbers]), label="each once")
        assert_that(
            out.predictions | "Wrong" >> beam.Filter(lambda kv: kv[1] != 2 * int(kv[0][1:])),
            equal_to([]),
            label="own prediction",
        )
        assert_that(
            rejected, equal_to([("k7", "ValueError('seven is rejected')")]), label="rejected"
        )
        assert_that(
            out[FAILED_CALLS]
            | "Has13" >> beam.Filter(lambda kv: kv[0] == "k13")
            | "Reason" >> beam.Map(lambda kv: kv[1]),
            equal_to(["RuntimeError('unlucky batch')"]),
            label="failed call",
        )
        assert_that(  # only 13's batch (at most max_batch_size photos) failed
            failed_calls | beam.combiners.Count.Globally() | beam.Map(lambda n: 1 <= n <= 3),
            equal_to([True]),
            label="one batch",
        )


def test_batches_made_upstream_are_called_as_they_come() -> None:
    """``batched=True``: each input list is one model call (the embed job batches before its
    reads); a failing call fails only its own list."""
    batches = [[(f"k{x}", x) for x in range(i, i + 4)] for i in range(0, 16, 4)]  # 12..15: 13
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions()) as p:
        out = (
            p
            | beam.Create(batches)
            | PipelinedInference(
                _Doubler(), each(_postprocess), model_tag="doubler-batched", batched=True
            )
        )
        assert_that(
            out.predictions,
            equal_to([(f"k{x}", 2 * x) for x in range(12) if x != 7]),
            label="predictions",
        )
        assert_that(
            out[FAILED_CALLS] | "Keys" >> beam.Map(lambda kv: kv[0]),
            equal_to(["k12", "k13", "k14", "k15"]),
            label="the list with 13",
        )
