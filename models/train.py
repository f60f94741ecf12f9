"""Training: transformed data -> models/VERSION/{embedder/, metrics.json, config.json} (the stage,
``vsearch train``, is pipelines/train.py).

One machine: all local GPUs through tf.distribute.MirroredStrategy (mixed precision on), or the CPU
with the same code. The retrieval test runs after every epoch and picks the exported weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf
import tensorflow_transform as tft

from core import paths, runs, storage
from models import artifact, dataset
from models.config import INSTANCE_HEAD, TrainConfig, default_epochs
from models.export import export_embedder, head_vocabulary
from models.features import IMAGE_KEY, LABEL_KEYS
from models.instances import instance_classes
from models.model import MaskedAccuracy, build_model, margin_ce, masked_sparse_ce
from models.retrieval_eval import SELECTION_METRIC, RetrievalEvalCallback


def _strategy(config: TrainConfig) -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    use_mp = config.mixed_precision == "on" or (config.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")
    return tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()


def with_input_size(config: TrainConfig, tft_output: tft.TFTransformOutput) -> TrainConfig:
    """The config with the preprocessed images' side as the model's input size (set once, by
    preprocess), and ``--epochs 0`` made that size's default; a config that names another size is
    refused."""
    shape = tuple(tft_output.transformed_feature_spec()[IMAGE_KEY].shape)
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
        raise ValueError(f"the preprocessed images are {shape}, not square RGB")
    if config.image_size not in (0, shape[0]):
        raise ValueError(
            f"image_size {config.image_size} does not match the preprocessed images {shape}"
        )
    size = int(shape[0])
    return dataclasses.replace(
        config, image_size=size, epochs=config.epochs or default_epochs(size)
    )


def model_version(config: TrainConfig, data_fingerprint: str) -> str:
    """``YYYYMMDD-<hash of config and data>``: same settings on the same data -> same version."""
    digest = hashlib.sha256(f"{config.fingerprint()}|{data_fingerprint}".encode()).hexdigest()[:10]
    return f"{config.date.replace('-', '')}-{digest}"


def _data_fingerprint(
    train_files: list[str], eval_files: list[str], n_train: int, vocabularies: dict[str, list[str]]
) -> str:
    parts = [storage.basename(f) for f in train_files + eval_files] + [
        str(n_train),
        json.dumps(vocabularies, sort_keys=True),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _schedule(
    config: TrainConfig, steps_per_epoch: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, int(config.warmup_epochs * steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * 0.1,
        decay_steps=max(1, total - warmup),
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
        alpha=0.01,
    )


# Studio photos the localiser learns from: enough shapes and colours; more only costs memory.
LOCALISER_ITEMS = 4000


def _train_localiser(
    config: TrainConfig, train_files: list[str], tft_output: tft.TFTransformOutput
) -> tuple[keras.Model | None, dict[str, float]]:
    """The query localiser, learnt from the train split's listing photos (None when off)."""
    if not config.localiser_steps:
        return None, {}
    from models.localiser import train_localiser

    items = dataset.listing_pixels(train_files, tft_output, LOCALISER_ITEMS)
    print(f"[train] query localiser: {len(items)} listing photos, {config.localiser_steps} steps")
    localiser, metrics = train_localiser(
        items,
        steps=config.localiser_steps,
        seed=config.seed,
        log=lambda line: print(f"[localiser] {line}", flush=True),
    )
    return localiser, {k: round(float(v), 4) for k, v in metrics.items()}


@dataclass(frozen=True)
class Trained:
    """A trained, exported candidate model."""

    version: str
    metrics: dict[str, Any]  # the best epoch's eval metrics
    model_dir: str
    images: int  # train + eval images it read


def train(config: TrainConfig) -> Trained:
    """Train on the transformed data of ``config.date``, export models/VERSION/ and return it
    (the stage, pipelines/train.py, records the run)."""
    with runs.stopwatch() as clock:
        keras.utils.set_random_seed(config.seed)
        tft_output = tft.TFTransformOutput(paths.transformed_dir(config.workdir, config.date))
        config = with_input_size(config, tft_output)
        train_files = dataset.split_files(config.workdir, config.date, dataset.TRAIN)
        eval_files = dataset.split_files(config.workdir, config.date, dataset.EVAL)
        all_listings, reviewed, n_train = dataset.scan_train(train_files, tft_output)
        listing_ids = instance_classes(
            all_listings, reviewed, config.max_instance_classes, config.seed
        )
        # Held-out images plus the training listings' photos: the whole-catalog retrieval test.
        eval_set = dataset.load_eval_set(eval_files, tft_output, gallery_files=train_files)
        vocabularies = {label: head_vocabulary(tft_output, label) for label in LABEL_KEYS}
        num_classes = {label: len(v) for label, v in vocabularies.items()} | {
            INSTANCE_HEAD: len(listing_ids)
        }
        version = model_version(
            config, _data_fingerprint(train_files, eval_files, n_train, vocabularies)
        )
        out_dir = paths.model_dir(config.workdir, version)

        # First: the embedding trains on its crops of the buyer photos (--review-crops).
        localiser, localiser_metrics = _train_localiser(config, train_files, tft_output)
        strategy = _strategy(config)
        steps = max(1, n_train // config.batch_size)
        steps = min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps
        with strategy.scope():
            model = build_model(config, num_classes)
            optimizer = keras.optimizers.AdamW(
                _schedule(config, steps), weight_decay=config.weight_decay, clipnorm=5.0
            )
            model.trainer.compile(
                optimizer=optimizer,
                loss={
                    h: margin_ce(config.instance_margin * config.cosine_scale)
                    if h == INSTANCE_HEAD and config.instance_margin
                    else masked_sparse_ce
                    for h in model.heads
                },
                loss_weights={h: config.weight(h) for h in model.heads},
                metrics={h: [MaskedAccuracy(name="acc")] for h in model.heads},
            )
        train_ds = dataset.train_dataset(
            train_files,
            tft_output,
            listing_ids,
            model.heads,
            config.batch_size,
            config.augment,
            config.seed,
            phone_rate=config.phone_views,
            localiser=localiser,
            review_crop_rate=config.review_crops,
        )
        # TensorBoard logs under WORKDIR, local or gs:// (TensorFlow's own GCS client writes them).
        log_dir = paths.train_logs_dir(config.workdir, version)
        callback = RetrievalEvalCallback(
            model.embedder,
            eval_set,
            lambda: dataset.eval_images(eval_set, tft_output),
            log_dir,
            patience=config.early_stopping_patience,
            min_epochs=config.early_stopping_min_epochs,
        )
        untrained = callback.measure()  # the random-init baseline, measured on the same eval data
        # Saved after every epoch and removed at the end: a retried task (preemption, timeout)
        # resumes after the last finished epoch instead of from scratch. It comes first so an
        # epoch is saved before any later callback can fail. On resume, the best-epoch choice
        # covers the epochs run since then (earlier epochs' weights are not kept).
        backup_dir = paths.train_backup_dir(config.workdir, version)
        backup = keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=True)
        resumed = storage.exists(storage.join(backup_dir, "training_metadata.json"))
        print(
            f"[train] {version}: {n_train} train images of {len(all_listings)} listings "
            f"({len(listing_ids)} instance classes), {len(eval_set)} retrieval-test images "
            f"({eval_set.gallery_size} of them training listing photos), "
            f"{steps} steps/epoch x {config.epochs} epochs, backbone {config.backbone}"
            + (" (resuming from the last saved epoch)" if resumed else ""),
            flush=True,
        )
        model.trainer.fit(
            train_ds,
            epochs=config.epochs,
            steps_per_epoch=steps,
            callbacks=[backup, callback],
            verbose=2,
        )
        best = dict(callback.best or {})
        export_embedder(
            tft_output,
            model.embedder,
            model.heads,
            paths.embedder_dir(config.workdir, version),
            localiser=localiser,
        )

    best_eval: dict[str, Any] = {
        k: v
        for k, v in best.items()
        if k not in ("epoch", "elapsed_s") and not k.startswith("train_")
    }
    metrics = {
        "version": version,
        "selection_metric": SELECTION_METRIC,
        "best_epoch": best.get("epoch"),
        "stopped_early_at": callback.stopped_early_at,
        "eval": best_eval,
        "untrained": untrained,
        "history": callback.history,
        "eval_files": [storage.basename(f) for f in eval_files],
        "train_images": n_train,
        "localiser": localiser_metrics,
        "wall_s": round(clock["s"], 1),
    }
    storage.write_text(
        storage.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    )
    cfg = {
        "version": version,
        "embedding_dim": config.embedding_dim,
        "image_size": config.image_size,
        "backbone": config.backbone,
        "date": config.date,
        "heads": list(model.heads),
        "vocabularies": vocabularies,
        "train_config": config.to_json(),
    }
    # Read back by models.artifact.read_config (the fields of artifact.ModelConfig).
    storage.write_text(
        artifact.config_uri(config.workdir, version),
        json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n",
    )
    return Trained(version, best_eval, out_dir, images=n_train + len(eval_set))
