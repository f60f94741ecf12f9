"""``vsearch preprocess``: catalog snapshot -> TF Transform -> transformed TFRecords + transform_fn.

One row per image (listing photos and buyer review photos alike, labelled with their listing's
labels), split by listing (``catalog.is_eval_listing``: a listing's photos and its reviews never
straddle train and eval). ``AnalyzeAndTransformDataset`` on train, ``TransformDataset`` on eval,
``WriteTransformFn``. Images enter TFT as the uint8 pixels of the sanitised image
(``images.decode_image``: decoded once, letterboxed), the same pixels the embed stage feeds the
exported model's pixel signature; the TFRecords store them once and the TFT graph's statistics
normalise them in training and serving alike.

Outputs under ``WORKDIR/transformed/dt=D/``: ``train-NNNNN-of-NNNNN.tfrecord.gz``,
``eval-NNNNN-of-NNNNN.tfrecord.gz``, ``transform_fn/``, ``transformed_metadata/``.

The Beam job is pipelines/preprocess_job.py, loaded when the stage runs: this module is light,
so ``vsearch preprocess --help`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core import runs
from core.runs import Counts
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE_STR, WORKDIR, doc

STAGE = "preprocess"
# The model input size and the rare-class cut of models.features (tests/test_cli.py checks that
# these equal features.DEFAULT_IMAGE_SIZE / DEFAULT_MIN_CLASS_COUNT; importing it needs TF).
MODEL_IMAGE_SIZE = 96
MIN_CLASS_COUNT = 5


@dataclass(frozen=True)
class PreprocessSettings:
    catalog: str = field(metadata=CATALOG)
    date: str = field(metadata=DATE_STR)
    workdir: str = field(metadata=WORKDIR)
    # The model's input size; 96 px keeps CPU training to minutes and still shows pattern detail.
    image_size: int = field(
        default=MODEL_IMAGE_SIZE, metadata=doc("side in pixels of the model's input images")
    )
    # 20% of listings (and all their reviews) held out for the retrieval test and the gate.
    eval_fraction: float = field(
        default=0.2, metadata=doc("share of listings held out (with their reviews) for eval")
    )
    # Classes rarer than this in the train split fold into the OOV ("other") class.
    min_class_count: int = field(
        default=MIN_CLASS_COUNT, metadata=doc("classes rarer than this become 'other'")
    )
    allowed_buckets: tuple[str, ...] = field(default=(), metadata=ALLOWED_BUCKETS)
    # The daily training budget: training reads a stable sample of at most this many listings of
    # the day's snapshot (all of them below it), not the whole catalog. 200k listings x ~5 photos
    # is ~1M images, about a day of training on one GPU; the embed stage still embeds everything.
    max_listings: int = field(
        default=200_000,
        metadata=doc("listings sampled from the day's snapshot for training (stable sample)"),
    )
    # Fixed shard counts give deterministic file names, so a re-run replaces every file.
    train_shards: int = field(default=4, metadata=doc("TFRecord files of the train split"))
    eval_shards: int = field(default=1, metadata=doc("TFRecord files of the eval split"))


def run(
    settings: PreprocessSettings,
    pipeline_args: list[str] | None = None,
    test_pipeline: object | None = None,
) -> Counts:
    """Run the stage for one date; writes its run summary and returns its counts."""
    from pipelines.preprocess_job import run_job  # Beam and TF Transform: only when it runs

    summary = run_job(settings, pipeline_args, test_pipeline)  # type: ignore[arg-type]
    runs.complete(settings.workdir, summary)
    return Counts.of(summary)
