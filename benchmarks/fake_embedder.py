"""A small stand-in for the exported embedder, with the same two serving signatures: the embed
and serve benchmarks run it when no trained model is at hand, the embed tests always.

``serving_default``: ``images`` tf.string [None] (encoded PNG/JPEG bytes) and ``serving_pixels``:
``pixels`` uint8 [None, S, S, 3] -> {"embedding": float32 [N, D] L2-normalised, "category": string
[N], "category_score": float32 [N]}. It decodes (bytes only), resizes, pools the pixels to 4x4x3
and projects them to D dims with a fixed seeded matrix: deterministic, fast, and different images
get different vectors.

On purpose it divides by the norm without an epsilon, so an all-black image (all-zero pooled
pixels) yields a NaN embedding: that is how tests drive the pipeline's NaN dead-letter path.
"""

from __future__ import annotations

import json
import os

import numpy as np

CATEGORIES = ("home/decor", "jewelry/rings", "clothing/tops", "art/prints")


def build_fake_model(
    workdir: str,
    version: str = "20260101-fake0000",
    dim: int = 16,
    image_size: int = 32,
    publish: bool = True,
) -> str:
    """Export the fake to ``WORKDIR/models/VERSION/`` (+ config.json, PUBLISHED); returns VERSION."""
    import tensorflow as tf

    from core import paths, storage

    proj = np.random.default_rng(7).normal(size=(48 + 1, dim)).astype(np.float32)
    heads = np.random.default_rng(8).normal(size=(48, len(CATEGORIES))).astype(np.float32)

    class Fake(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = tf.Variable(proj[:48], trainable=False)
            self.heads = tf.Variable(heads, trainable=False)
            self.vocab = tf.constant(CATEGORIES)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            def decode(b: tf.Tensor) -> tf.Tensor:
                img = tf.io.decode_image(b, channels=3, expand_animations=False)
                img.set_shape([None, None, 3])
                return tf.image.resize(tf.cast(img, tf.float32) / 255.0, [image_size, image_size])

            x = tf.map_fn(
                decode,
                images,
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
            )
            return self.outputs(x)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="pixels")
            ]
        )
        def serve_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.outputs(tf.cast(pixels, tf.float32) / 255.0)

        def outputs(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            pooled = tf.reshape(tf.image.resize(x, [4, 4], method="area"), [-1, 48])
            e = tf.matmul(pooled, self.proj)
            e = e / tf.norm(e, axis=1, keepdims=True)  # NaN for an all-zero input, see module doc
            logits = tf.matmul(pooled, self.heads)
            probs = tf.nn.softmax(logits)
            return {
                "embedding": e,
                "category": tf.gather(self.vocab, tf.argmax(logits, axis=1)),
                "category_score": tf.reduce_max(probs, axis=1),
            }

    module = Fake()
    model_dir = paths.model_dir(workdir, version)
    local = storage.normalize(paths.embedder_dir(workdir, version))
    if storage.is_gcs(local):
        raise ValueError("build the fake locally, then copy it")
    os.makedirs(local, exist_ok=True)
    signatures = {"serving_default": module.serve, "serving_pixels": module.serve_pixels}
    tf.saved_model.save(module, local, signatures=signatures)
    config = {"version": version, "embedding_dim": dim, "image_size": image_size}
    storage.write_text(storage.join(model_dir, "config.json"), json.dumps(config))
    if publish:
        storage.write_text(paths.published_model_pointer(workdir), version + "\n")
    return version
