"""The embed job's steps (``pipelines/embed_job.py``, ``transforms/inference.py``): the catalog
read, the failure paths after the model (failed calls, rejected vectors), and a real
export through the job.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from core import paths, storage
from pipelines import embed
from tests import embed_fixtures as fx

pytestmark = pytest.mark.timeout(300)

# ------------------------------------------------------------------ the real export


def _build_real_export(workdir: str, size: int = 32, dim: int = 16) -> str:
    """An untrained but real `models/` export: TFT graph + Keras backbone + heads, raw bytes in."""
    import apache_beam as beam
    import tensorflow_transform as tft

    from core.images import decode_image
    from models import features as F
    from models.config import TrainConfig
    from models.export import export_embedder
    from models.model import build_model
    from pipelines.preprocess import PreprocessSettings
    from pipelines.preprocess_job import transform_and_write

    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        rows.append(
            {
                F.IMAGE_KEY: decode_image(fx.png(color, size=size, stripe=2 + i % 3), size),
                F.LISTING_ID_KEY: f"L{i // 2}".encode(),
                F.KIND_KEY: b"listing",
                "category": [b"home/decor", b"art/prints"][i % 2],
                "color": b"red",
                "shape": b"tall",
                "material": b"wood",
            }
        )
    version = "20260101-realtest"
    settings = PreprocessSettings(
        catalog="unused", date="2026-01-01", workdir=workdir, image_size=size, min_class_count=1
    )
    with beam.Pipeline() as p:
        transform_and_write(
            p | "Train" >> beam.Create(rows[:8]), p | "Eval" >> beam.Create(rows[8:]), settings
        )
    tft_output = tft.TFTransformOutput(paths.transformed_dir(workdir, "2026-01-01"))
    classes = {k: tft_output.vocabulary_size_by_name(F.vocab_name(k)) + 1 for k in F.LABEL_KEYS} | {
        "instance": 6
    }
    config = TrainConfig(workdir=workdir, date="2026-01-01", image_size=size, embedding_dim=dim)
    model = build_model(config, classes)
    _ = model.embedder(np.zeros((1, size, size, 3), "float32"))
    export_embedder(tft_output, model.embedder, model.heads, paths.embedder_dir(workdir, version))
    cfg = {"version": version, "embedding_dim": dim, "image_size": size}
    storage.write_text(
        storage.join(paths.model_dir(workdir, version), "config.json"), json.dumps(cfg)
    )
    return version


def test_real_export_through_the_job(tmp_path) -> None:
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _build_real_export(workdir)
    fx.write_catalog(catalog, fx.D1, dict(list(fx.GOOD.items())[:4]))
    s = embed.run(fx.settings(catalog, workdir, fx.D1, model_version=version), fx.BEAM_ARGS)
    assert (s.read, s.ok, s.dead_lettered) == (4, 4, 0)
    t = fx.read_partition(workdir, version, fx.D1)
    fx.check_contract(t, version, fx.D1)
    assert set(t["category_pred"].to_pylist()) <= {"home/decor", "art/prints", ""}
    assert all(0.0 < x <= 1.0 for x in t["category_score"].to_pylist())


@pytest.mark.parametrize("stage", ["check-catalog", "preprocess", "embed"])
def test_lone_surrogates_become_dead_letters_in_the_shared_catalog_reader(tmp_path, stage):
    """check-catalog, preprocess and embed all read the snapshot through ReadCatalog."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.read_catalog import ReadCatalog

    catalog = str(tmp_path)
    day = paths.catalog_day(catalog, fx.D1)
    cat = '"category": "home/decor"'
    lines = [
        f'{{"listing_id": "ok", "image_uris": ["a.png"], {cat}}}',
        f'{{"listing_id": "x\\ud800", "image_uris": ["b.png"], {cat}}}',
        f'{{"listing_id": "lab", "image_uris": ["c.png"], {cat}, "material": "\\udfff"}}',
        '{"review_id": "r1", "listing_id": "ok", "image_uri": "\\ud801.png"}',
    ]
    storage.write_text(storage.join(day, "listings.jsonl"), "\n".join(lines[:3]) + "\n")
    storage.write_text(storage.join(day, "reviews.jsonl"), lines[3] + "\n")
    with TestPipeline() as p:
        out = p | ReadCatalog(catalog, fx.D1, stage=stage)
        ids = out["listings"] | beam.Map(lambda x: x.listing_id)
        assert_that(ids, equal_to(["ok"]), label="good")
        dead = out["dead_letter"] | beam.Map(lambda d: (d.listing_id, "lone surrogate" in d.error))
        assert_that(dead, equal_to([("x\\ud800", True), ("lab", True), ("ok", True)]), label="dead")


def test_embed_reads_no_review_rows(tmp_path) -> None:
    """Embed's catalog read skips the reviews table: bad review rows are check-catalog's and
    preprocess's dead letters, not embed's, and no review row is parsed or shuffled."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.read_catalog import ReadCatalog

    catalog = str(tmp_path)
    day = paths.catalog_day(catalog, fx.D1)
    listing = '{"listing_id": "ok", "image_uris": ["a.png"], "category": "home/decor"}'
    reviews = ['{"review_id": "r1", "listing_id": "gone", "image_uri": "r.png"}', "{not json"]
    storage.write_text(storage.join(day, "listings.jsonl"), listing + "\n")
    storage.write_text(storage.join(day, "reviews.jsonl"), "\n".join(reviews) + "\n")
    with TestPipeline() as p:
        both = p | "Both" >> ReadCatalog(catalog, fx.D1)
        dead = both["dead_letter"] | "BothDead" >> beam.Map(lambda d: d.error.split(":")[0])
        assert_that(dead, equal_to(["reviews", "reviews"]), label="both_dead")
        listings_only = p | "ListingsOnly" >> ReadCatalog(
            catalog, fx.D1, stage=embed.STAGE, reviews=False
        )
        ids = listings_only["listings"] | beam.Map(lambda x: x.listing_id)
        assert_that(ids, equal_to(["ok"]), label="listings")
        assert_that(listings_only["reviews"], equal_to([]), label="no_reviews")
        assert_that(listings_only["dead_letter"], equal_to([]), label="no_dead")


def test_raw_bytes_pixels_and_the_job_agree_on_a_non_square_jpeg(tmp_path) -> None:
    """One image path: a non-square JPEG through the raw-bytes signature (decoded and letterboxed
    in the graph), the pixel signature (Pillow's safe decode) and the embed job: cosine >= 0.999."""
    from models.artifact import Embedder

    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = _build_real_export(workdir)
    rng = np.random.default_rng(4)
    photos = {}
    for i, (w, h) in enumerate(((160, 90), (70, 130), (300, 200))):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + 2 * yy) % 256], -1).astype(np.uint8)
        rgb[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 256, 3)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=92)
        photos[f"J{i}"] = buf.getvalue()
    fx.write_catalog(catalog, fx.D1, {k: [v] for k, v in photos.items()})
    s = embed.run(fx.settings(catalog, workdir, fx.D1, model_version=version), fx.BEAM_ARGS)
    assert (s.ok, s.dead_lettered) == (3, 0)
    t = fx.read_partition(workdir, version, fx.D1).sort_by("listing_id")
    by_job = np.array(t["embedding"].to_pylist(), np.float32)
    ordered = [photos[k] for k in t["listing_id"].to_pylist()]
    embedder = Embedder.open(workdir, version)
    by_bytes = embedder.embed_bytes(ordered)["embedding"]
    by_pixels = embedder.embed_photos(ordered)
    np.testing.assert_allclose(np.sum(by_job * by_pixels, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(by_job * by_bytes, axis=1)
    assert np.all(cosine >= 0.999), cosine


# ------------------------------------------------------------------ the failure path after the model


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> tuple[str, str]:
    return fx.fake_model(tmp_path_factory)


def test_a_vector_is_normalised_or_rejected_with_its_reason() -> None:
    """The inference step's postprocess arithmetic: unit float32 vectors, and for a vector no
    direction can be taken from, the reason its photo's dead letter gives; its batch mates are
    normalised all the same."""
    from transforms.inference import unit_vectors

    vectors = np.array([[3.0, 4.0], [np.nan, 1.0], [np.inf, 0.0], [0.0, 0.0], [0.0, -2.0]])
    unit, reasons = unit_vectors(vectors.astype(np.float32))
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit[[0, 4]], [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)
    assert reasons == [
        "",
        "embedding has NaN or inf values",
        "embedding has NaN or inf values",
        "embedding has zero norm",
        "",
    ]


def test_a_failed_model_call_dead_letters_each_photo_of_its_batch(
    fake_model_dir, tmp_path, monkeypatch
) -> None:
    """A model call that raises goes to the inference step's failed calls: every photo of its batch is a dead letter with the call's error, the run summary
    accounts for each, and the bad-fraction check keeps the partition from being published."""
    from core import runs
    from core.deadletter import read_dead_letters
    from pipelines.embed import EmbedError
    from transforms import inference

    def failing(model, batch):
        raise RuntimeError("the model call failed")

    monkeypatch.setattr(inference, "_predict", failing)
    catalog, workdir = str(tmp_path / "cat"), str(tmp_path / "work")
    version = fx.install_model(fake_model_dir, workdir)
    fx.write_catalog(catalog, fx.D1, {**fx.GOOD, "LCORRUPT": fx.BAD["LCORRUPT"]})
    with pytest.raises(EmbedError, match=r"7 of 7 images dead-lettered"):
        embed.run(fx.settings(catalog, workdir, fx.D1), fx.BEAM_ARGS)
    summary = runs.read_summary(workdir, "embed", fx.D1)
    assert (summary["read"], summary["ok"], summary["dead_lettered"]) == (7, 0, 7)
    assert summary["extra"]["published"] is False
    letters = {d["listing_id"]: d["error"] for d in read_dead_letters(workdir, "embed", fx.D1)}
    assert set(letters) == {*fx.GOOD, "LCORRUPT"}
    assert "listing image" in letters.pop("LCORRUPT")  # failed before the model, its own reason
    assert set(letters.values()) == {"inference failed: RuntimeError('the model call failed')"}
    assert fx.read_partition(workdir, version, fx.D1).num_rows == 0
