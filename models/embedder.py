"""Embedding photos with a published model, outside Beam: query time and index validation.

Photos are sanitised exactly as the catalog images were before the embed stage ran the model
(``images.decode_image`` at the model's image size, then PNG), so a query photo and a catalog
photo of the same thing go through the same preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from vsearch import paths, storage


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

    def embed(self, photos: Sequence[bytes], batch_size: int = 64) -> np.ndarray:
        import tensorflow as tf

        from vsearch import images

        out = []
        for i in range(0, len(photos), batch_size):
            clean = [
                images.encode_png(images.decode_image(b, size=self.image_size))
                for b in photos[i : i + batch_size]
            ]
            result = self._serving(images=tf.constant(clean, dtype=tf.string))
            out.append(np.asarray(result["embedding"].numpy(), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
