"""``vsearch train``: the train stage. Its settings are ``models.config.TrainConfig`` (every
training setting, typed, with the reason for each default; the input size is read from
preprocess's output); its result names the candidate the gate measures next. The network, its
data and its export are models/ (TensorFlow, loaded only when the stage runs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from core import runs
from models.capabilities import SELECTION_METRIC
from models.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "run"]


@dataclass(frozen=True)
class TrainResult:
    version: str  # the candidate the gate measures next
    metrics: dict[str, Any]  # best epoch's eval metrics
    model_dir: str


def run(settings: TrainConfig) -> TrainResult:
    """Train and export one candidate model; record the run (``runs/dt=D/train.json``)."""
    from models.train import train  # TensorFlow: only when the stage runs

    with runs.stopwatch() as clock:
        trained = train(settings)
    result = TrainResult(trained.version, trained.metrics, trained.model_dir)
    runs.complete(
        settings.workdir,
        runs.RunSummary(
            "train",
            settings.date,
            read=trained.images,
            ok=trained.images,
            dead_lettered=0,
            wall_s=clock["s"],
            extra={**asdict(result), SELECTION_METRIC: trained.metrics.get(SELECTION_METRIC)},
        ),
    )
    scores = {k: round(v, 4) for k, v in trained.metrics.items()}
    print(f"[train] version {trained.version}: " + json.dumps(scores), flush=True)
    return result
