"""The preprocessing_fn on its own: a tiny real TF Transform run on in-memory rows."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from models import features as F  # noqa: E402


def _rows() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        # Solid colour images with known channel statistics: red channel 0 or 255, others random.
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[..., 0] = 255 if i % 2 else 0
        rgb[..., 1] = rng.integers(0, 256)
        rgb[..., 2] = 128
        rows.append(
            {
                F.IMAGE_KEY: rgb,  # the safe decoder's uint8 pixels
                F.LISTING_ID_KEY: f"L{i}".encode(),
                F.KIND_KEY: b"listing" if i % 3 else b"review",
                # "mug" x6, "vase" x5, "rare" x1 -> rare is folded into OOV with min_class_count=2.
                "category": b"mug" if i < 6 else (b"vase" if i < 11 else b"rare"),
                # colour missing on every 4th row.
                "color": b"" if i % 4 == 0 else b"red",
                "shape": b"round",
                "material": b"",
            }
        )
    return rows


def _transform(tmp_path, rows):
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(F.raw_feature_spec(8))
    )
    with tft_beam.Context(temp_dir=str(tmp_path / "tmp"), force_tf_compat_v1=False):
        (transformed, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            F.make_preprocessing_fn(image_size=8, min_class_count=2), output_record_batches=False
        )
    return transformed, transform_fn


def test_preprocessing_fn_normalises_and_builds_vocabularies(tmp_path) -> None:
    rows = _rows()
    transformed, _ = _transform(tmp_path, rows)
    assert len(transformed) == len(rows)
    stored = np.stack([np.asarray(r[F.IMAGE_KEY]).reshape(8, 8, 3) for r in transformed])
    # The pixels are stored as they came in (once; no float or PNG copy) ...
    by_order = {
        bytes(np.asarray(r[F.LISTING_ID_KEY]).ravel()[0]): i for i, r in enumerate(transformed)
    }
    for row in rows:
        np.testing.assert_array_equal(stored[by_order[row[F.LISTING_ID_KEY]]], row[F.IMAGE_KEY])
    # ... and normalised in the graph with the statistics every row carries.
    mean = np.stack([np.asarray(r[F.IMAGE_MEAN_KEY]) for r in transformed])
    std = np.stack([np.asarray(r[F.IMAGE_STD_KEY]) for r in transformed])
    assert np.allclose(mean, mean[0]) and np.allclose(std, std[0])
    img = F.normalize_pixels(tf.constant(stored), tf.constant(mean), tf.constant(std)).numpy()
    # Full-pass statistics: every channel ends up with mean 0 and std 1 over the whole dataset,
    # a constant channel (blue) has mean 0 without dividing by zero.
    np.testing.assert_allclose(img[..., :2].mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(img[..., :2].std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(img[..., 2], 0.0, atol=1e-3)
    # Red channel: half 0, half 1 in [0, 1] -> exactly -1 and +1 after normalisation.
    np.testing.assert_allclose(
        sorted({round(float(v), 3) for v in img[..., 0].ravel()}), [-1.0, 1.0]
    )

    def scalar(row: dict, key: str) -> object:
        value = np.asarray(row[key]).ravel()[0]
        return value.decode() if isinstance(value, bytes) else value

    by_id = {scalar(r, F.LISTING_ID_KEY): r for r in transformed}
    cat = {k: int(scalar(v, "category")) for k, v in by_id.items()}
    # Vocabulary by frequency: mug (6) -> 0, vase (5) -> 1; the single "rare" -> OOV bucket 2.
    assert cat["L0"] == 0 and cat["L7"] == 1 and cat["L11"] == 2
    color = {k: int(scalar(v, "color")) for k, v in by_id.items()}
    assert color["L0"] == F.MISSING_LABEL and color["L4"] == F.MISSING_LABEL and color["L1"] == 0
    assert all(int(scalar(v, "material")) == F.MISSING_LABEL for v in transformed)
    # Pass-through features survive for the retrieval evaluation and the gate.
    kinds = {scalar(v, F.KIND_KEY) for v in transformed}
    assert kinds == {"listing", "review"}
