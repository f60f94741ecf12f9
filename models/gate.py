"""Measuring models for the gate: both models *now*, through their exported serving signatures, on
the same images, and the same-run baselines. The rules are pipelines/gate_rules.py; the stage
(``vsearch gate``) is pipelines/gate.py.

Fixed eval data: the eval split of the candidate's training date (the uint8 pixels the
transformed eval TFRecords hold, through each model's pixel signature). The split is a stable
hash of listing_id, so these listings were in neither model's training data, and re-measuring
the published model on them avoids comparing numbers taken on different days' eval sets. It
also tests the exported artifact itself (pixels in, TFT graph inside), not the in-memory Keras
model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import tensorflow_transform as tft

from core import paths, storage
from models import artifact, dataset
from models.baselines import colour_histogram
from models.retrieval_eval import evaluate
from models.retrieval_metrics import shopper_metrics


def _embed(embedder: artifact.Embedder, pixels: np.ndarray) -> artifact.Outputs:
    """Pixels in; a published model of another image size gets them as lossless PNGs instead,
    which its raw-bytes signature letterboxes (square to square: a plain resize) to its size."""
    if embedder.image_size == pixels.shape[1]:
        return embedder.embed_pixels(pixels)
    from core import images

    return embedder.embed_bytes([images.encode_png(p) for p in pixels])


def measure(
    workdir: str,
    version: str,
    eval_set: dataset.EvalSet,
    tft_output: tft.TFTransformOutput,
    vocabularies: dict[str, list[str]],
    batch_size: int,
) -> dict[str, float]:
    """Retrieval metrics and head accuracies of an exported model on the given eval images."""
    embedder = artifact.Embedder.open(workdir, version)
    # Head outputs are class names; accuracies compare them with the candidate's vocabularies.
    batches = [
        _embed(embedder, pixels) for pixels in dataset.eval_pixels(eval_set, tft_output, batch_size)
    ]
    metrics = evaluate(({"embedding": b["embedding"]} for b in batches), eval_set)
    for label, vocab in vocabularies.items():
        y = eval_set.labels[label]
        present = (y >= 0) & eval_set.held_out  # never the training listings' photos
        if label in batches[0] and present.any():
            pred = np.concatenate([b[label] for b in batches])
            truth = np.array([vocab[i].encode() for i in y[present]])
            metrics[f"{label}_accuracy"] = float(np.mean(pred[present] == truth))
    return metrics


def measure_baselines(
    workdir: str,
    candidate: str,
    eval_set: dataset.EvalSet,
    tft_output: tft.TFTransformOutput,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """The same-run baselines on the candidate's retrieval-test images: a colour histogram
    (computed here) and the untrained network of the candidate's architecture (measured by
    ``vsearch train`` before step 1 on these same images, in its metrics.json)."""
    # Per batch: the histograms are 2 KB an image, the pixels of a 50k-image gallery ~1.4 GB.
    hists = np.concatenate(
        [colour_histogram(p) for p in dataset.eval_pixels(eval_set, tft_output, batch_size)]
    )
    out = {
        "colour histogram": shopper_metrics(
            hists,
            eval_set.listing_ids,
            eval_set.is_review,
            eval_set.held_out,
            eval_set.labels,
        )
    }
    metrics_uri = storage.join(paths.model_dir(workdir, candidate), "metrics.json")
    if storage.exists(metrics_uri):
        untrained = json.loads(storage.read_text(metrics_uri)).get("untrained")
        if untrained:
            out["untrained network"] = {k: float(v) for k, v in untrained.items()}
    return out


@dataclass(frozen=True)
class Measured:
    """Both models and the baselines, measured now on the candidate's retrieval-test images."""

    date: str  # the candidate's training date: whose eval split was used
    candidate: dict[str, float]
    published: dict[str, float] | None
    baselines: dict[str, dict[str, float]]


def measure_models(
    workdir: str, candidate: str, published: str | None, batch_size: int, baselines: bool
) -> Measured:
    """The candidate, the ``published`` model (if any) and, if asked, the same-run baselines,
    on the eval split of the candidate's training date."""
    cand_cfg = artifact.read_config(workdir, candidate)
    date = cand_cfg.date
    if not date:
        raise artifact.ModelArtifactError(
            f"{artifact.config_uri(workdir, candidate)} names no training date"
        )
    tft_output = tft.TFTransformOutput(paths.transformed_dir(workdir, date))
    # The same images the candidate's retrieval test used: its held-out listings plus its
    # training listings' photos as the whole-catalog gallery.
    eval_set = dataset.load_eval_set(
        dataset.split_files(workdir, date, dataset.EVAL),
        tft_output,
        gallery_files=dataset.split_files(workdir, date, dataset.TRAIN),
    )
    vocabularies = cand_cfg.vocabularies
    cand = measure(workdir, candidate, eval_set, tft_output, vocabularies, batch_size)
    pub = None
    if published is not None:
        pub = measure(workdir, published, eval_set, tft_output, vocabularies, batch_size)
    found = (
        measure_baselines(workdir, candidate, eval_set, tft_output, batch_size) if baselines else {}
    )
    return Measured(date, cand, pub, found)
