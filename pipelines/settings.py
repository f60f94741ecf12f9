"""Settings and results of the Beam stages: light (no Beam graph, no TensorFlow), so that the CLI
is built from them and ``vsearch STAGE --help`` answers at once (build-index's settings live
in its module: they nest the index's settings, which need faiss). Each field's help is the flag's
help (``core.settings.doc``); the comment beside a default says why it is that value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core import images
from core.runs import Counts
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE, DATE_STR, WORKDIR, doc

# The model input size and the rare-class cut of models.features (tests/test_cli.py checks that
# these equal features.DEFAULT_IMAGE_SIZE / DEFAULT_MIN_CLASS_COUNT; importing it needs TF).
MODEL_IMAGE_SIZE = 96
MIN_CLASS_COUNT = 5


@dataclass(frozen=True)
class CheckCatalogSettings:
    catalog: str = field(metadata=CATALOG)
    date: dt.date = field(metadata=DATE)
    workdir: str = field(metadata=WORKDIR)
    # Small is enough to prove an image decodes; the model's size would only cost time.
    image_size: int = field(
        default=96, metadata=doc("side in pixels each image is decoded and letterboxed to")
    )
    allowed_buckets: tuple[str, ...] = field(default=(), metadata=ALLOWED_BUCKETS)
    max_pixels: int = field(
        default=images.DEFAULT_MAX_PIXELS,  # a 50 MP camera photo is fine, more is suspect
        metadata=doc("refuse images whose header claims more pixels than this"),
    )


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


@dataclass(frozen=True)
class EmbedSettings:
    catalog: str = field(metadata=CATALOG)
    date: dt.date = field(metadata=DATE)
    workdir: str = field(metadata=WORKDIR)
    model_version: str | None = field(  # None: the published model (models/PUBLISHED)
        default=None, metadata=doc("model VERSION (default: models/PUBLISHED)", flag="model")
    )
    full: bool = field(  # the first run of a newly promoted model
        default=False, metadata=doc("re-embed every image, skipping nothing (after a new model)")
    )
    min_batch_size: int = field(
        default=8, metadata=doc("smallest inference batch (BatchElements adapts up to the max)")
    )
    max_batch_size: int = field(  # 64 x 224^2 RGB floats = 38 MB: fits any CPU or GPU worker
        default=64, metadata=doc("largest inference batch; bounds worker memory (GPU included)")
    )
    max_bad_fraction: float = field(  # more than this means a broken input or model
        default=0.01,
        metadata=doc("fail without publishing when more images than this are dead-lettered"),
    )
    num_shards: int = field(default=0, metadata=doc("Parquet files (0: one per ~50k rows)"))
    allowed_buckets: tuple[str, ...] = field(default=(), metadata=ALLOWED_BUCKETS)
    large_model: bool = field(  # GPU workers: one TensorFlow per GPU, not one per SDK process
        default=False, metadata=doc("one model copy per machine, shared by its processes (GPU)")
    )
    intra_op_threads: int = field(default=0, metadata=doc("TensorFlow threads (0: TF decides)"))
    # Pillow releases the GIL: a decode thread works on the next photos while the model runs.
    decode_threads: int = field(
        default=1,
        metadata=doc("threads decoding photos ahead while the model runs (0: decode in line)"),
    )
    # A broken upstream export must not empty the index: an empty snapshot, or one that lost
    # more than max_shrink_fraction of the last embedded day's listings, is refused.
    allow_shrink: bool = field(
        default=False,
        metadata=doc(
            "embed an empty or sharply smaller snapshot (a real clear-out of the catalog)"
        ),
    )
    max_shrink_fraction: float = field(  # losing >20% of listings in a day is a broken export
        default=0.2,
        metadata=doc("largest day-over-day drop in listings accepted without --allow-shrink"),
    )


@dataclass(frozen=True)
class EmbedResult(Counts):
    """Counts (``ok`` = images embedded, ``skipped`` = unchanged) and which model embedded them."""

    model_version: str = ""
    full: bool = False  # the partition was re-embedded from scratch

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> EmbedResult:
        c, extra = Counts.from_summary(summary), summary["extra"]
        return cls(**vars(c), model_version=str(extra["model_version"]), full=bool(extra["full"]))
