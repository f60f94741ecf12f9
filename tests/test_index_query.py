"""Search by photo end to end: a tiny SavedModel with the serving contract, an index of its
embeddings, publish, then ``vsearch query`` and ``PhotoSearch.search``."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import embedding_tables
from core import paths, storage
from index import builder, publish
from models.artifact import Embedder
from search.photo_search import PhotoSearch
from vsearch import cli

VERSION = "20260101-tiny"
DIM = 16
COLOURS = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(40)]


def photo(rgb: tuple[int, int, int], fmt: str = "JPEG", size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format=fmt)
    return buf.getvalue()


def save_tiny_model(workdir: str) -> None:
    """Embedding = normalise(W @ mean RGB + b): photos of the same colour embed together."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((3, DIM)).astype(np.float32))
    b = tf.constant(rng.standard_normal((DIM,)).astype(np.float32) * 0.1)

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            def one(x: tf.Tensor) -> tf.Tensor:
                img = tf.cast(tf.io.decode_png(x, channels=3), tf.float32) / 255.0
                return tf.reduce_mean(img, axis=[0, 1])

            return self.outputs(tf.map_fn(one, images, fn_output_signature=tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="pixels")])
        def serve_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.outputs(tf.reduce_mean(tf.cast(pixels, tf.float32) / 255.0, axis=[1, 2]))

        def outputs(self, mean: tf.Tensor) -> dict[str, tf.Tensor]:
            emb = tf.math.l2_normalize(tf.matmul(mean - 0.5, w) + b, axis=1)
            return {"embedding": emb, "category": tf.fill(tf.shape(mean)[:1], "home/decor")}

    m = Tiny()
    tf.saved_model.save(
        m,
        paths.embedder_dir(workdir, VERSION),
        signatures={"serving_default": m.serve, "serving_pixels": m.serve_pixels},
    )
    config = {"version": VERSION, "embedding_dim": DIM, "image_size": 32}
    storage.write_text(
        storage.join(paths.model_dir(workdir, VERSION), "config.json"), json.dumps(config)
    )
    storage.write_text(paths.published_model_pointer(workdir), VERSION + "\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    w = str(tmp_path_factory.mktemp("query"))
    save_tiny_model(w)
    return w


def test_query_cli_finds_the_listing_of_a_photo(workdir: str, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # Embed the catalog photos with the model itself (one per listing), then index them.
    from core import images

    embedder = Embedder.open(workdir, VERSION)
    emb = embedder.embed_pixels(np.stack([images.decode_image(photo(c), 32) for c in COLOURS]))[
        "embedding"
    ]
    table = embedding_tables.embedding_table(emb, 1, VERSION)
    out = paths.index_build_dir(workdir, VERSION, "20260101T000000Z-q")
    settings = builder.IndexSettings(
        factory="Flat", shards=2, validation_queries=8, latency_queries=5
    )
    result = builder.build_index(
        embedding_tables.batches_factory(table), settings, out, VERSION, "20260101T000000Z-q"
    )
    publish.publish(workdir, result.manifest_uri)

    # A JPEG "phone photo" of listing 7's colour, at another size, finds listing 7 first.
    img = tmp_path / "query.jpg"
    img.write_bytes(photo(COLOURS[7], "JPEG", size=80))
    assert cli.main(["query", str(img), "--workdir", workdir, "--k", "3", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert (
        line["hits"][0]["listing_id"] == embedding_tables.listing_id(7) and len(line["hits"]) == 3
    )
    # A model without a localiser searches the whole photo, and says so.
    assert line["hits"][0]["box"] == [0.0, 0.0, 1.0, 1.0]
    assert cli.main(["query", str(img), "--workdir", workdir, "--k", "2"]) == 0
    text = capsys.readouterr().out
    assert embedding_tables.listing_id(7) in text and embedding_tables.CATEGORIES[7 % 4] in text
    assert "(whole photo)" in text

    with PhotoSearch.open(workdir) as s:
        hits = s.search([photo(COLOURS[3], "PNG"), photo(COLOURS[11])], k=5)
        assert [h[0].listing_id for h in hits] == [
            embedding_tables.listing_id(3),
            embedding_tables.listing_id(11),
        ]
        from core.images import ImageError

        with pytest.raises(ImageError):
            s.search([b"not an image"], k=5)
    assert os.path.exists(result.manifest_uri)
