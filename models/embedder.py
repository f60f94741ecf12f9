"""Embedding photos with a published model, outside Beam: query time and index validation.

Photos are sanitised exactly as the catalog images were before the embed stage ran the model
(``images.decode_image`` at the model's image size, then PNG), so a query photo and a catalog
photo of the same thing go through the same preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from vsearch.core import paths, storage


class PhotoEmbedder:
    """Loads ``models/VERSION/embedder`` once; ``embed(photos)`` -> L2-normalised [N, D] float32."""

    def __init__(self, workdir: str, version: str) -> None:
        from models.export import load_serving

        config = json.loads(
            storage.read_text(storage.join(paths.model_dir(workdir, version), "config.json"))
        )
        self.version = version
        self.image_size = int(config["image_size"])
        self._serving = load_serving(paths.embedder_dir(workdir, version))

    def prepare(self, photo: bytes) -> bytes:
        """The sanitised PNG the model is fed; raises ``images.ImageError`` for a bad photo."""
        from vsearch.core import images

        return images.encode_png(images.decode_image(photo, size=self.image_size))

    def embed(self, photos: Sequence[bytes], batch_size: int = 64) -> np.ndarray:
        return self.embed_prepared([self.prepare(p) for p in photos], batch_size)

    def embed_prepared(self, clean: Sequence[bytes], batch_size: int = 64) -> np.ndarray:
        """Embed photos already passed through ``prepare``, in batches."""
        import tensorflow as tf

        out = []
        for i in range(0, len(clean), batch_size):
            batch = tf.constant(list(clean[i : i + batch_size]), dtype=tf.string)
            out.append(
                np.asarray(self._serving(images=batch)["embedding"].numpy(), dtype=np.float32)
            )
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
