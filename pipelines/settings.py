"""Settings and results of the Beam stages: light (no Beam graph, no TensorFlow), so that the CLI
is built from them and ``vsearch STAGE --help`` answers at once (build-index's settings live
in its module: they nest the index's settings, which need faiss). Each field's help is the flag's
help (``core.settings.doc``); the comment beside a default says why it is that value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import ALLOWED_BUCKETS, CATALOG, DATE_STR, WORKDIR, doc

# The model input size and the rare-class cut of models.features (tests/test_cli.py checks that
# these equal features.DEFAULT_IMAGE_SIZE / DEFAULT_MIN_CLASS_COUNT; importing it needs TF).
MODEL_IMAGE_SIZE = 96
MIN_CLASS_COUNT = 5


from pipelines.check_catalog import CheckCatalogSettings  # noqa: E402,F401  moved; the registry is updated by the lead


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


from pipelines.embed import EmbedResult, EmbedSettings  # noqa: E402,F401  moved; the registry (vsearch/stages.py) is updated by the lead
