"""TrainConfig: every training setting in one typed place, with the reason for each default."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from models.features import LABEL_KEYS

BACKBONES = ("small_cnn", "mobilenet_v3_small", "efficientnet_b0", "resnet50")
INSTANCE_HEAD = (
    "instance"  # softmax over train listing ids (review photo and listing photos share one)
)


@dataclass(frozen=True)
class TrainConfig:
    workdir: str
    date: str
    # A small plain CNN trains from scratch in minutes on 2 CPU cores and meets the quality bar on
    # the generated catalog; mobilenet_v3_small / efficientnet_b0 / resnet50 are for real data/GPUs.
    backbone: str = "small_cnn"
    # Must equal the preprocess stage's --image-size (checked against the transformed data).
    image_size: int = 96
    # DESIGN.md: D=256 float32 is what the index and the embeddings Parquet are sized for.
    embedding_dim: int = 256
    # ~10 passes over a 2,000-listing catalog fit the "few minutes on CPU" budget (recall@10 and
    # category precision still rise at epoch 8); the retrieval callback keeps the best epoch, so
    # extra epochs cannot make the exported model worse on the eval split.
    epochs: int = 10
    # 64 keeps BatchNorm statistics stable while a step stays ~0.2 s on 2 CPU cores.
    batch_size: int = 64
    # AdamW with a cosine decay from here is robust for from-scratch CNNs with BatchNorm.
    learning_rate: float = 3e-3
    weight_decay: float = 5e-4
    # Warm-up avoids the early BatchNorm/large-LR blow-ups of from-scratch training.
    warmup_epochs: float = 0.5
    # Per-head loss weights. Category is the main proxy (Etsy) and what same-category precision
    # measures: measured on the generated catalog, 2.0+ lifts it from 0.85 to 0.90 at no cost in
    # recall. Colour adds visual structure; shape/material are weakly visible at 96 px, so they get
    # less say. The instance head (listing id) pulls a buyer's phone photo onto its listing's photos;
    # at 0.5 recall@10 is already ~0.95 while it no longer splits categories into listing islands.
    loss_weights: tuple[tuple[str, float], ...] = (
        ("category", 2.5),
        ("color", 1.0),
        ("shape", 0.25),
        ("material", 0.25),
        (INSTANCE_HEAD, 0.5),
    )
    # Logits = scale * cosine(embedding, class centre): aligns the heads with the retrieval metric.
    cosine_scale: float = 16.0
    # Augment listing photos so that they look like review photos (crop, light, blur, noise).
    augment: bool = True
    # User-supplied weights file (any URI, Keras ``.weights.h5``) for transfer learning; None = scratch.
    backbone_weights: str | None = None
    # With backbone_weights: train only the top N weighted backbone layers; None = all trainable.
    trainable_layers: int | None = None
    # Mixed precision only helps on GPUs; on CPU it is slower, so "auto" enables it only there.
    mixed_precision: str = "auto"
    seed: int = 0
    # Upper bound on steps per epoch (None = whole split); tests use it to stay within seconds.
    steps_per_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.embedding_dim < 2 or self.image_size < 32 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                "embedding_dim >= 2, image_size >= 32, epochs >= 1 and batch_size >= 2 are required"
            )
        known = (*LABEL_KEYS, INSTANCE_HEAD)
        for name, w in self.loss_weights:
            if name not in known or w < 0:
                raise ValueError(f"loss weight {name}={w}: names must be in {known}, weights >= 0")
        if self.trainable_layers is not None and self.trainable_layers < 0:
            raise ValueError("--trainable-layers must be >= 0")

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
