"""The model, transfer-learning switches and the export: behaviour a user of `vsearch train` relies on."""

from __future__ import annotations

import io

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from models import dataset  # noqa: E402
from models import features as F  # noqa: E402
from models.artifact import Embedder  # noqa: E402
from models.config import TrainConfig  # noqa: E402
from models.export import export_embedder  # noqa: E402
from models.model import EMBEDDING, build_model, masked_sparse_ce  # noqa: E402

SIZE = 32
CLASSES = {"category": 3, "color": 3, "shape": 2, "material": 2, "instance": 5}


def _config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(
        workdir=str(tmp_path), date="2026-01-01", image_size=SIZE, embedding_dim=16, **kw
    )


def _encoded(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
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


def test_instance_margin_makes_a_narrow_win_cost_loss() -> None:
    # Cosine logits (scale 16): the true class wins by 0.1 in cosine. Without a margin that is a
    # confident win; with CosFace's 0.3 margin it still costs loss, and a missing label none.
    logits = tf.constant([[16 * 0.6, 16 * 0.5], [0.0, 0.0]])
    labels = tf.constant([0, -1])
    plain = masked_sparse_ce(labels, logits).numpy()
    margin = masked_sparse_ce(labels, logits, margin=16 * 0.3).numpy()
    assert margin[0] > plain[0] + 1.0 and margin[1] == plain[1] == 0.0
    wide = masked_sparse_ce(labels, tf.constant([[16 * 0.9, 16 * 0.1], [0.0, 0.0]]), 16 * 0.3)
    assert float(wide[0]) < 0.01  # a win by more than the margin costs (almost) nothing


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
                F.IMAGE_KEY: rgb,
                F.LISTING_ID_KEY: f"L{i // 2}".encode(),
                F.KIND_KEY: b"review" if i % 2 else b"listing",
                "category": cats[i % 3],
                "color": b"red" if i % 2 else b"",
                "shape": b"tall",
                "material": b"wood",
            }
        )
    return rows


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[str, object, object, object]:
    """Preprocess 24 rows, export an untrained model: (SavedModel dir, model, eval set, TFT output)."""
    import apache_beam as beam
    import tensorflow_transform as tft

    from core import paths
    from pipelines.preprocess import PreprocessSettings
    from pipelines.preprocess_job import transform_and_write

    tmp_path = tmp_path_factory.mktemp("export")
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
    tft_output = tft.TFTransformOutput(paths.transformed_dir(str(tmp_path), "2026-01-01"))
    eval_files = dataset.split_files(str(tmp_path), "2026-01-01", dataset.EVAL)
    eval_set = dataset.load_eval_set(eval_files, tft_output)
    classes = {k: tft_output.vocabulary_size_by_name(F.vocab_name(k)) + 1 for k in F.LABEL_KEYS} | {
        "instance": 8
    }
    model = build_model(_config(tmp_path), classes)
    _ = model.embedder(np.zeros((1, SIZE, SIZE, 3), "float32"))
    out_dir = str(tmp_path / "models" / "v1" / "embedder")
    export_embedder(tft_output, model.embedder, model.heads, out_dir)
    return out_dir, model, eval_set, tft_output


def test_export_serves_pixels_and_bytes_like_the_trained_model(exported) -> None:
    """Same image: stored pixels -> pixel signature, PNG -> raw-bytes signature, TFT features -> Keras."""
    out_dir, model, eval_set, tft_output = exported
    expected = np.concatenate(
        [
            model.embedder(x, training=False)[EMBEDDING].numpy()
            for x in dataset.eval_images(eval_set, tft_output)
        ]
    )
    pixels = np.concatenate(list(dataset.eval_pixels(eval_set, tft_output)))
    assert pixels.dtype == np.uint8 and pixels.shape == (8, SIZE, SIZE, 3)
    embedder = Embedder.load(out_dir)
    served = embedder.embed_pixels(pixels)
    np.testing.assert_allclose(served["embedding"], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served["embedding"], axis=1), 1.0, atol=1e-5)
    assert served["category"].dtype == object and served["category"].shape == (8,)
    assert set(served["category"]) <= {b"mug", b"vase", b"lamp", b""}
    assert np.all((served["category_score"] > 0) & (served["category_score"] <= 1))
    assert "instance" not in served  # a training aid, not a product output
    # A lossless PNG of the same pixels through the raw-bytes signature: the same embedding.
    by_bytes = embedder.embed_bytes([_encoded(p) for p in pixels])
    np.testing.assert_allclose(by_bytes["embedding"], expected, atol=1e-5)


def test_transformed_records_store_each_image_once_as_pixels(exported) -> None:
    _, _, _, tft_output = exported
    spec = tft_output.transformed_feature_spec()
    images = {k: v for k, v in spec.items() if k.startswith(F.IMAGE_KEY)}
    assert images[F.IMAGE_KEY].dtype == tf.int64 and tuple(images[F.IMAGE_KEY].shape) == (
        SIZE,
        SIZE,
        3,
    )
    # Besides the pixels only the 3+3 normalisation statistics: no float copy, no PNG copy.
    assert {k: tuple(v.shape) for k, v in images.items() if k != F.IMAGE_KEY} == {
        F.IMAGE_MEAN_KEY: (3,),
        F.IMAGE_STD_KEY: (3,),
    }


def test_raw_bytes_pixels_and_pillow_agree_on_a_non_square_jpeg(exported) -> None:
    """A non-square JPEG: raw bytes (decoded + letterboxed in the graph) vs Pillow's safe decode
    + the pixel signature (what the embed job and search do): cosine >= 0.999."""
    from core import images

    embedder = Embedder.load(exported[0])
    rng = np.random.default_rng(3)
    photos = []
    for w, h in ((120, 70), (45, 110), (400, 260)):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx * yy) % 200], -1).astype(np.uint8)
        rgb[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 256, 3)
        photos.append(_encoded(rgb, "JPEG"))
    by_bytes = embedder.embed_bytes(photos)["embedding"]
    by_pixels = embedder.embed_photos(photos)
    assert [images.decode_image(p, SIZE).shape for p in photos] == [(SIZE, SIZE, 3)] * 3
    cosine = np.sum(by_bytes * by_pixels, axis=1)
    assert np.all(cosine >= 0.999), cosine


def test_a_missing_or_truncated_saved_model_is_one_clear_error(exported, tmp_path) -> None:
    import shutil

    from models.artifact import ModelArtifactError

    missing = str(tmp_path / "nothing" / "embedder")
    with pytest.raises(ModelArtifactError, match=f"no SavedModel at {missing}"):
        Embedder.load(missing)
    out_dir = str(tmp_path / "copy" / "embedder")
    shutil.copytree(exported[0], out_dir)
    pb = tmp_path / "copy" / "embedder" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:200])
    with pytest.raises(ModelArtifactError, match=f"cannot load SavedModel at {out_dir}"):
        Embedder.load(out_dir)


def test_the_retrieval_test_takes_training_photos_and_streams_them_in_its_order(exported) -> None:
    """Gallery = training listing photos, plus a few training buyer photos as queries only; the
    pixels streamed through the model come in exactly the metadata's order."""
    _, _, _, tft_output = exported
    work = tft_output.transform_savedmodel_dir.rsplit("/transformed/", 1)[0]
    train_files = dataset.split_files(work, "2026-01-01", dataset.TRAIN)
    eval_files = dataset.split_files(work, "2026-01-01", dataset.EVAL)
    full = dataset.load_eval_set(eval_files, tft_output, gallery_files=train_files)
    assert full.gallery_size == 8 and int(np.sum(full.is_review & ~full.held_out)) == 8
    small = dataset.load_eval_set(
        eval_files, tft_output, gallery_files=train_files, max_gallery=3, max_train_queries=2
    )
    extra = ~small.held_out
    assert small.gallery_size == 3 and int(np.sum(small.is_review[extra])) == 2
    streamed = np.concatenate(
        [
            b[F.LISTING_ID_KEY].numpy().reshape(-1)
            for b in dataset._stream(small, tft_output, (F.LISTING_ID_KEY,), 4)
        ]
    )
    assert [s.decode() for s in streamed] == small.listing_ids.tolist()
    pixels = np.concatenate(list(dataset.eval_pixels(small, tft_output, batch_size=5)))
    assert len(pixels) == len(small)
