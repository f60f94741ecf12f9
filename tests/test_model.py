"""The model, transfer-learning switches and the export: behaviour a user of `vsearch train` relies on."""

from __future__ import annotations

import io

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from models import dataset  # noqa: E402
from models import features as F  # noqa: E402
from models.config import TrainConfig  # noqa: E402
from models.export import export_embedder, load_serving  # noqa: E402
from models.model import EMBEDDING, build_model, masked_sparse_ce  # noqa: E402

SIZE = 32
CLASSES = {"category": 3, "color": 3, "shape": 2, "material": 2, "instance": 5}


def _config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(
        workdir=str(tmp_path), date="2026-01-01", image_size=SIZE, embedding_dim=16, **kw
    )


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _fit_a_few_steps(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, SIZE, SIZE, 3)).astype("float32")
    y = {h: rng.integers(-1, CLASSES[h], size=16) for h in model.heads}
    model.trainer.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss={h: masked_sparse_ce for h in model.heads}
    )
    model.trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)


def test_embedding_is_l2_normalised_and_heads_have_one_output_per_class(tmp_path) -> None:
    model = build_model(_config(tmp_path), CLASSES)
    out = model.embedder(np.random.default_rng(0).normal(size=(4, SIZE, SIZE, 3)).astype("float32"))
    np.testing.assert_allclose(np.linalg.norm(out[EMBEDDING], axis=1), 1.0, atol=1e-5)
    assert {h: out[h].shape[1] for h in model.heads} == CLASSES


def test_missing_labels_contribute_no_loss() -> None:
    logits = tf.constant([[5.0, -5.0], [-5.0, 5.0]])
    assert float(tf.reduce_sum(masked_sparse_ce(tf.constant([-1, -1]), logits))) == 0.0
    assert float(tf.reduce_sum(masked_sparse_ce(tf.constant([1, -1]), logits))) > 5.0


def test_trainable_layers_freezes_all_but_the_top_n(tmp_path) -> None:
    model = build_model(_config(tmp_path, trainable_layers=2), CLASSES)
    weighted = [layer for layer in model.backbone.layers if layer.weights]
    before = [[w.copy() for w in layer.get_weights()] for layer in weighted]
    _fit_a_few_steps(model)
    after = [layer.get_weights() for layer in weighted]
    changed = [
        any(not np.array_equal(a, b) for a, b in zip(x, y, strict=True))
        for x, y in zip(before, after, strict=True)
    ]
    # BatchNorm moving statistics included: a frozen layer is bit-for-bit unchanged.
    assert not any(changed[:-2]), [
        layer.name for layer, c in zip(weighted, changed, strict=True) if c
    ]
    assert all(changed[-2:])


def test_backbone_weights_load_from_a_user_file(tmp_path) -> None:
    donor = build_model(_config(tmp_path), CLASSES)
    _fit_a_few_steps(donor)
    path = tmp_path / "backbone.weights.h5"
    donor.backbone.save_weights(str(path))
    model = build_model(_config(tmp_path, backbone_weights=str(path)), CLASSES)
    for a, b in zip(donor.backbone.get_weights(), model.backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(
            _config(tmp_path, backbone_weights=str(tmp_path / "missing.weights.h5")), CLASSES
        )


def _rows(n: int) -> list[dict[str, bytes]]:
    rng = np.random.default_rng(1)
    cats = [b"mug", b"vase", b"lamp"]
    rows = []
    for i in range(n):
        rgb = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        rgb[: SIZE // 2] = rng.integers(0, 256, 3)
        rows.append(
            {
                F.IMAGE_KEY: _png(rgb),
                F.LISTING_ID_KEY: f"L{i // 2}".encode(),
                F.KIND_KEY: b"review" if i % 2 else b"listing",
                "category": cats[i % 3],
                "color": b"red" if i % 2 else b"",
                "shape": b"tall",
                "material": b"wood",
            }
        )
    return rows


def test_export_takes_raw_bytes_and_matches_the_trained_model(tmp_path) -> None:
    """Same image: raw PNG bytes -> SavedModel, and TFT-transformed features -> Keras model."""
    import apache_beam as beam
    import tensorflow_transform as tft

    from pipelines.preprocess import PreprocessSettings, transform_and_write
    from vsearch.core import paths

    settings = PreprocessSettings(
        catalog="unused",
        date="2026-01-01",
        workdir=str(tmp_path),
        image_size=SIZE,
        min_class_count=1,
    )
    rows = _rows(24)
    with beam.Pipeline() as p:
        transform_and_write(
            p | "Train" >> beam.Create(rows[:16]), p | "Eval" >> beam.Create(rows[16:]), settings
        )
    tft_output = tft.TFTransformOutput(paths.transform_fn_dir(str(tmp_path), "2026-01-01"))
    eval_files = dataset.split_files(str(tmp_path), "2026-01-01", dataset.EVAL)
    eval_set = dataset.load_eval_set(eval_files, tft_output, with_png=True)
    classes = {k: tft_output.vocabulary_size_by_name(F.vocab_name(k)) + 1 for k in F.LABEL_KEYS} | {
        "instance": 8
    }
    model = build_model(_config(tmp_path), classes)
    _ = model.embedder(np.zeros((1, SIZE, SIZE, 3), "float32"))
    out_dir = str(tmp_path / "models" / "v1" / "embedder")
    export_embedder(tft_output, model.embedder, model.heads, out_dir)

    expected = np.concatenate(
        [
            model.embedder(x, training=False)[EMBEDDING].numpy()
            for x in dataset.eval_images(eval_set, tft_output)
        ]
    )
    served = load_serving(out_dir)(images=tf.constant(list(eval_set.pngs)))
    np.testing.assert_allclose(served["embedding"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served["embedding"].numpy(), axis=1), 1.0, atol=1e-5)
    assert served["category"].dtype == tf.string and served["category"].shape == (8,)
    assert set(served["category"].numpy()) <= {b"mug", b"vase", b"lamp", b""}
    assert np.all((served["category_score"].numpy() > 0) & (served["category_score"].numpy() <= 1))
    assert "instance" not in served  # a training aid, not a product output
