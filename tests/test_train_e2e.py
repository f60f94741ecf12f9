"""A tiny end-to-end run on the DirectRunner: generate -> preprocess -> train -> export -> gate."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

import tensorflow_transform as tft  # noqa: E402

from core import catalog, images, paths, pointers, snapshot, storage  # noqa: E402
from core.deadletter import read_dead_letters  # noqa: E402
from models import dataset  # noqa: E402
from models.artifact import Embedder  # noqa: E402
from models.config import TrainConfig  # noqa: E402
from models.export import QUERY_BOXES  # noqa: E402
from pipelines import gate as gate_mod  # noqa: E402
from pipelines.preprocess import PreprocessSettings  # noqa: E402
from pipelines.preprocess import run as preprocess  # noqa: E402
from pipelines.train import run as train  # noqa: E402
from synthetic.generate import generate_catalog  # noqa: E402

DATE = "2026-01-01"
SIZE = 48


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_preprocess_train_export_gate(tmp_path) -> None:
    cat, work = str(tmp_path / "catalog"), str(tmp_path / "work")
    generate_catalog(cat, listings=50, days=1, seed=5, image_size=64, corrupt_fraction=0.03)

    summary = preprocess(
        PreprocessSettings(
            catalog=cat, date=DATE, workdir=work, image_size=SIZE, min_class_count=2
        ),
        ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
    )
    out = paths.transformed_dir(work, DATE)
    names = {storage.basename(u) for u in storage.list_prefix(out)}
    assert {"train-00000-of-00004.tfrecord.gz", "eval-00000-of-00001.tfrecord.gz"} <= names
    assert storage.exists(storage.join(out, "transform_fn", "saved_model.pb"))
    # Every image is accounted for; corrupt ones are dead letters with a reason, not crashes.
    assert summary.read == summary.ok + summary.dead_lettered and summary.ok > 100
    dead = read_dead_letters(work, "preprocess", DATE)
    assert len(dead) == summary.dead_lettered > 0
    assert all(d["stage"] == "preprocess" and d["error"] for d in dead)
    # Split by listing: a listing's photos and its reviews are all on one side, the stable hash's side.
    tft_output = tft.TFTransformOutput(paths.transformed_dir(work, DATE))
    train_ids, _, _ = dataset.scan_train(dataset.split_files(work, DATE, dataset.TRAIN), tft_output)
    eval_set = dataset.load_eval_set(dataset.split_files(work, DATE, dataset.EVAL), tft_output)
    assert train_ids and len(eval_set) and not set(train_ids) & set(eval_set.listing_ids)
    assert all(catalog.is_eval_listing(i) for i in eval_set.listing_ids)
    assert not any(catalog.is_eval_listing(i) for i in train_ids)
    assert eval_set.is_review.any() and not eval_set.is_review.all()
    assert not storage.list_prefix(storage.join(out, "tmp"))

    config = TrainConfig(
        workdir=work, date=DATE, image_size=SIZE, embedding_dim=32, epochs=2, batch_size=16,
        localiser_steps=30,
    )  # fmt: skip
    result = train(config)
    model_dir = paths.model_dir(work, result.version)
    assert result.version.startswith("20260101-")
    cfg = json.loads(storage.read_text(storage.join(model_dir, "config.json")))
    assert (cfg["version"], cfg["embedding_dim"], cfg["image_size"]) == (result.version, 32, SIZE)
    metrics = json.loads(storage.read_text(storage.join(model_dir, "metrics.json")))
    assert len(metrics["history"]) == 2 and metrics["selection_metric"] == "review_recall_at_10"
    for key in (
        "review_recall_at_1",
        "review_recall_at_10",
        "category_precision_at_10",
        "color_precision_at_10",
    ):
        assert 0.0 <= metrics["eval"][key] <= 1.0
    assert storage.list_prefix(storage.join(model_dir, "logs"))  # TensorBoard event files

    # The export takes a catalog photo as raw bytes, or as the pixels embed/search decode it to,
    # and embeds it the same way both times.
    listing = snapshot.read_snapshot(cat, DATE).listings[0]
    photo = storage.read_bytes(listing.image_uris[0])
    embedder = Embedder.open(work, result.version)
    served = embedder.embed_bytes([photo, photo])
    assert served["embedding"].shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(served["embedding"], axis=1), 1.0, atol=1e-5)
    assert served["category"][0].decode() in set(cfg["vocabularies"]["category"])
    # Same pixels into both signatures (a lossless photo at the model's size, so neither path
    # resizes): the same embedding. Resizing in the graph vs in Pillow differs by a few levels per
    # pixel; that parity is tested on non-square JPEGs in test_embed.py (a model trained two epochs
    # here gave cosine 0.984 after a 64->48 px downscale once, so it is not asserted on this model).
    pixels = images.decode_image(photo, SIZE)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    by_pixels = embedder.embed_pixels(pixels[None])["embedding"]
    by_bytes = embedder.embed_bytes([png.getvalue()])["embedding"]
    assert float(np.dot(by_pixels[0], by_bytes[0])) >= 0.9999

    # The model ships its localiser: a query photo comes back as the whole frame plus boxes,
    # each view an embedding, the boxes inside the photo, the whole frame first.
    assert embedder.has_query_signature() and "localiser" in metrics
    review = snapshot.read_snapshot(cat, DATE).reviews[0]
    views = embedder.embed_query([storage.read_bytes(review.image_uri), photo])
    assert views.embeddings.shape == (2, 1 + QUERY_BOXES, 32)  # the photo, then its boxes
    np.testing.assert_allclose(np.linalg.norm(views.embeddings, axis=-1), 1.0, atol=1e-4)
    assert np.all(views.photo_boxes[:, 0] == [0, 0, 1, 1]) and views.box_scores[0, 0] == 1.0
    assert np.all((views.photo_boxes >= 0) & (views.photo_boxes <= 1))
    # The whole view is the photo exactly as the embed job embeds a catalog photo, computed in
    # the same model call as the boxes: a listing's own photo finds itself at score 1.0.
    as_catalog = embedder.embed_photos([photo])[0]
    assert float(np.dot(views.embeddings[1, 0], as_catalog)) >= 0.9999

    # The first model is promoted (a tiny model: judged by a floor, not against the baselines);
    # the pointer names it.
    decision = gate_mod.run(
        gate_mod.GateSettings(
            work, result.version, beat_baselines=False, floors=(("review_recall_at_10", 0.0),)
        )
    )
    assert decision.promoted and decision.published is None
    assert pointers.read_pointer(paths.published_model_pointer(work)).value == result.version
    again = gate_mod.run(gate_mod.GateSettings(work, result.version))
    assert not again.promoted and "already" in again.reasons[0]
