"""TrainConfig: every training setting in one typed place, with the reason for each default."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from core.settings import DATE_STR, WORKDIR, doc

BACKBONES = ("small_cnn", "mobilenet_v3_small", "efficientnet_b0", "resnet50")
INSTANCE_HEAD = (
    "instance"  # softmax over train listing ids (review photo and listing photos share one)
)


@dataclass(frozen=True)
class TrainConfig:
    workdir: str = field(metadata=WORKDIR)
    date: str = field(metadata=DATE_STR)  # the transformed data of this date
    # A small plain CNN trains from scratch in minutes on 2 CPU cores and meets the quality bar on
    # the generated catalog; mobilenet_v3_small / efficientnet_b0 / resnet50 are for real data/GPUs.
    backbone: str = field(default="small_cnn", metadata=doc("the image network", choices=BACKBONES))
    # The input side in pixels is the preprocessed images' (`vsearch preprocess --image-size`):
    # train reads it from preprocess's output, so it is set in one place. 0 = not read yet.
    image_size: int = field(default=0, metadata={"cli": False})
    # DESIGN.md: D=256 float32 is what the index and the embeddings Parquet are sized for.
    embedding_dim: int = field(default=256, metadata=doc("embedding size D"))
    # Measured on the 2,000-listing catalog (BENCHMARKS.md, ablation): whole-index review
    # recall@10 is 0.754 when training 10 epochs and 0.817 with 20 (>= 0.8 from epoch 16), ~2.5 min an
    # epoch on 2 idle CPU cores. The retrieval callback keeps the best epoch, so extra epochs cannot
    # make the exported model worse on the eval split, and early stopping ends a plateau sooner.
    # 0 (the default) = by input size (``default_epochs``): 20 at 96 px, 50 from 160 px on, where
    # the phone catalog's 30-epoch model was still improving when its schedule ended (issue 29).
    epochs: int = field(
        default=0, metadata=doc("passes over the train split, at most (0: 20, or 50 from 160 px)")
    )
    # Stop when the retrieval metric has not improved for this many epochs (0 = never stop early).
    # 4 rides out the one- or two-epoch dips seen on both benchmark catalogs while the cosine
    # learning rate is still high; a small catalog that plateaus stops well before --epochs.
    # It never stops before three quarters of --epochs (early_stopping_min_epochs): on a
    # 200-listing catalog a lucky first epoch (recall@10 0.115 by chance, then 0.04-0.08) ended
    # training at epoch 5, and the gate rightly refused that model; and before 3/4 the cosine
    # learning rate is still above 15 % of its peak, where the phone catalog's metric swings by
    # up to 0.09 from one epoch to the next: stopped at epoch 31 of 50 (half was the rule), a run
    # found 0.533 of held-out buyer photos' listings with the localiser, against 0.648 for an
    # identical run that went on to epoch 37 (BENCHMARKS.md, "Default flags on every style").
    early_stopping_patience: int = field(
        default=4, metadata=doc("epochs without a better retrieval metric before stopping (0: off)")
    )
    # 64 keeps BatchNorm statistics stable while a step stays ~0.2 s on 2 CPU cores.
    batch_size: int = field(default=64, metadata=doc("images per training step"))
    # AdamW with a cosine decay from here is robust for from-scratch CNNs with BatchNorm.
    learning_rate: float = field(default=3e-3, metadata=doc("peak AdamW learning rate"))
    weight_decay: float = field(default=5e-4, metadata=doc("AdamW weight decay"))
    # Warm-up avoids the early BatchNorm/large-LR blow-ups of from-scratch training.
    warmup_epochs: float = field(default=0.5, metadata=doc("linear warm-up, in epochs"))
    # Per-head loss weights. Category is the main proxy (Etsy) and what same-category precision
    # measures: measured on the generated catalog, 2.0+ lifts it from 0.85 to 0.90 at no cost in
    # recall. Colour adds visual structure; shape/material are weakly visible at 96 px, so they get
    # less say. The instance head (listing id) pulls a buyer's phone photo onto its listing's photos.
    # 2.0 since issue 29: on the phone catalog 0.5 left the model unable to match even the buyer
    # photos it trained on (0.097 whole-photo recall@10 on them); at 2.0 the localiser path found
    # 0.276 of held-out buyer photos' listings in the top 10, and category precision held (0.91).
    loss_weights: tuple[tuple[str, float], ...] = field(
        default=(
            ("category", 2.5),
            ("color", 1.0),
            ("shape", 0.25),
            ("material", 0.25),
            (INSTANCE_HEAD, 2.0),
        ),
        metadata=doc(
            "per-head loss weights, e.g. category=1,color=0.5 (unnamed heads keep defaults)",
            parse=lambda text: parse_loss_weights(text),
            metavar="HEAD=W,...",
        ),
    )
    # Logits = scale * cosine(embedding, class centre): aligns the heads with the retrieval metric.
    cosine_scale: float = field(default=16.0, metadata=doc("logit scale of the cosine heads"))
    # CosFace's additive margin on the instance head (cosine units; the logit is scale * cos):
    # a listing's photos must beat every other listing by this much, not just win. 0 = plain
    # softmax, the default until measured on every catalog style (benchmarks/model_quality.py).
    instance_margin: float = field(
        default=0.0, metadata=doc("additive cosine margin of the instance head (0: none)")
    )
    # Augment listing photos so that they look like review photos (crop, light, blur, noise).
    augment: bool = field(default=True, metadata=doc("augment listing photos like phone photos"))
    # The query localiser (models/localiser.py), trained after the embedding from the train
    # split's listing photos pasted onto clutter; it ships in the SavedModel's query signatures.
    # Measured on the phone catalog's 826 real buyer photos (benchmarks/localiser_quality.py
    # --buyer-catalog): top box at IoU >= 0.5 on 0.661 of them after 1200 steps of 32 scenes
    # (111 s), 0.722 after 3000 (279 s; top 3: 0.770 -> 0.849); held-out synthetic scenes
    # 0.832 -> 0.885. 0 = no localiser: queries are embedded as the whole frame only.
    localiser_steps: int = field(
        default=3000, metadata=doc("training steps of the query localiser (0: none)")
    )
    # Of the training buyer photos, this share is replaced by the localiser's crop of the item
    # (models/dataset.py): the very view a query is embedded as, tied to its own listing.
    review_crops: float = field(
        default=0.5, metadata=doc("share of training buyer photos cut to the localiser's box")
    )
    # Of the augmented listing photos, this share becomes a phone view (models/augment.py): the
    # item cut out, shrunk to 22-65 % of the frame, placed off-centre on clutter beside another
    # listing's item, half in a 4:3 letterboxed frame. Without it the model never sees a small
    # item and is at chance on phone photos (BENCHMARKS.md, phone catalog). 0 = off.
    # Measured on the phone catalog (BENCHMARKS.md): at 0.5 the short CPU training learnt far
    # less (whole-catalog review recall@10 0.035 vs 0.111 without, category precision 0.38 at
    # epoch 7 vs 0.84): the model never sees the item at a size it can learn from. The query is
    # cut to the localiser's box instead (review_crops), so the default is off.
    phone_views: float = field(
        default=0.0, metadata=doc("share of augmented listing photos made into phone views")
    )
    # User-supplied weights file (any URI, Keras ``.weights.h5``) for transfer learning; None = scratch.
    backbone_weights: str | None = field(
        default=None, metadata=doc("URI of a Keras .weights.h5 file for the backbone")
    )
    # With backbone_weights: train only the top N weighted backbone layers; None = all trainable.
    trainable_layers: int | None = field(
        default=None, metadata=doc("freeze all but the top N weighted backbone layers")
    )
    # Mixed precision only helps on GPUs; on CPU it is slower, so "auto" enables it only there.
    mixed_precision: str = field(
        default="auto", metadata=doc("mixed float16", choices=("auto", "on", "off"))
    )
    # The instance head cannot have one class per listing at marketplace scale (100M x 256
    # weights, most classes seen once a year): at most this many listings get a class per run,
    # those with buyer review photos first (models/instances.py). Above the 2,000-listing
    # benchmark catalog, so every listing there keeps its class.
    max_instance_classes: int = field(
        default=50_000, metadata=doc("listings given an instance-head class per training run")
    )
    seed: int = field(default=0, metadata=doc("random seed (weights, shuffling, augmentation)"))
    # Upper bound on steps per epoch (None = whole split); tests use it to stay within seconds.
    steps_per_epoch: int | None = field(
        default=None, metadata=doc("cap on steps per epoch (default: the whole split)")
    )

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.embedding_dim < 2 or self.epochs < 0 or self.batch_size < 2:
            raise ValueError("embedding_dim >= 2, epochs >= 0 and batch_size >= 2 are required")
        if self.image_size != 0 and self.image_size < 32:
            raise ValueError(
                f"image_size must be >= 32 (or 0: preprocess's), got {self.image_size}"
            )
        from models.features import LABEL_KEYS  # here, not above: --help must not load TensorFlow

        known = (*LABEL_KEYS, INSTANCE_HEAD)
        for name, w in self.loss_weights:
            if name not in known or w < 0:
                raise ValueError(f"loss weight {name}={w}: names must be in {known}, weights >= 0")
        if not 0.0 <= self.instance_margin < 1.0:
            raise ValueError(f"--instance-margin must be in [0, 1), got {self.instance_margin}")
        if self.localiser_steps < 0:
            raise ValueError(f"--localiser-steps must be >= 0, got {self.localiser_steps}")
        if not 0.0 <= self.review_crops <= 1.0:
            raise ValueError(f"--review-crops must be in 0..1, got {self.review_crops}")
        if not 0.0 <= self.phone_views <= 1.0:
            raise ValueError(f"--phone-views must be in 0..1, got {self.phone_views}")
        if self.early_stopping_patience < 0:
            raise ValueError("--early-stopping-patience must be >= 0")
        if self.max_instance_classes < 1:
            raise ValueError("--max-instance-classes must be >= 1")
        if self.trainable_layers is not None and self.trainable_layers < 0:
            raise ValueError("--trainable-layers must be >= 0")

    @property
    def early_stopping_min_epochs(self) -> int:
        """The first epoch at which early stopping may end training: 3/4 of ``epochs``."""
        return math.ceil(self.epochs * 3 / 4)

    def weight(self, head: str) -> float:
        return dict(self.loss_weights).get(head, 0.0)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss_weights"] = dict(self.loss_weights)
        return d

    def fingerprint(self) -> str:
        """Hash of everything that changes the model (not where it is written)."""
        d = self.to_json()
        d.pop("workdir")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


LARGE_INPUT = 160  # from this input size on, training runs longer (default_epochs)


def default_epochs(image_size: int) -> int:
    """``--epochs``' default for an input size: 50 from 160 px on, else 20. Measured: 20 epochs
    meet the 96-px styles' targets (0.817 review recall@10 on the 2,000-listing catalog); at 160 px
    the phone catalog's 30-epoch model was still improving when its cosine schedule ended, and
    with 50 (early stopping ended it at 37) both phone targets were met (BENCHMARKS.md)."""
    return 50 if image_size >= LARGE_INPUT else 20


def parse_loss_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``category=1,color=0.5`` -> (("category", 1.0), ("color", 0.5)); unnamed heads keep defaults."""
    defaults = dict(TrainConfig.__dataclass_fields__["loss_weights"].default)  # type: ignore[arg-type]
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            defaults[name.strip()] = float(value)
        except ValueError as e:
            raise ValueError(f"--loss-weights expects name=number pairs, got {part!r}") from e
    return tuple(defaults.items())
