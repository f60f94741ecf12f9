"""The model artifact, read in one place: ``models/VERSION/{config.json, embedder/}`` and PUBLISHED.

Every reader of a trained model goes through here: the embed job's model handler, the gate,
search by photo, build-index's review-photo queries and the benchmarks.

* ``read_config(workdir, version)``: the typed ``config.json`` (version, embedding dim, image size).
* ``published_version(workdir)`` / ``resolve(workdir, version)``: which model to use, with a clear
  error when nothing is published.
* ``Embedder.load(uri)`` / ``Embedder.open(workdir, version)``: the SavedModel (a gs:// model is
  copied to a local folder first), behind three methods: ``embed_pixels`` (uint8 [N, S, S, 3]
  through the ``serving_pixels`` signature), ``embed_bytes`` (encoded photos through the raw-bytes
  ``serving_default`` signature, decoded in the graph) and ``embed_photos`` (encoded photos decoded
  by the safe Pillow decoder, then pixels: what in-process callers use for untrusted photos).

A missing or truncated SavedModel is one ``ModelArtifactError`` naming the path.

Only methods cross a process boundary: with ``large_model`` the embed job's inference step holds a proxy to an
``Embedder`` living in another process (``MultiProcessShared``), so callers never touch attributes
of the loaded TensorFlow object.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import paths, pointers, storage

BYTES_SIGNATURE = "serving_default"  # models.export.SIGNATURE
PIXELS_SIGNATURE = "serving_pixels"  # models.export.PIXELS_SIGNATURE
QUERY_SIGNATURE = "serving_query"  # models.export.QUERY_SIGNATURE: frame + localised boxes
QUERY_PIXELS_SIGNATURE = "serving_query_pixels"  # models.export.QUERY_PIXELS_SIGNATURE
BYTES_INPUT = "images"
PIXELS_INPUT = "pixels"
WHOLE_INPUT = "whole"  # models.export.WHOLE_INPUT: the query photo at the model's size
CONFIG_FILE = "config.json"
# 64 photos x 224^2 x 3 floats = 38 MB: fits any CPU or GPU worker.
DEFAULT_BATCH_SIZE = 64

_log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


class ModelArtifactError(RuntimeError):
    """A model that cannot be used: nothing published, no or a bad config.json, a broken SavedModel."""


@dataclass(frozen=True)
class ModelConfig:
    """What ``vsearch train`` writes to ``models/VERSION/config.json`` (the fields readers use)."""

    version: str
    embedding_dim: int
    image_size: int
    date: str | None = None  # the training date (its transformed data holds the eval split)
    heads: tuple[str, ...] = ()
    vocabularies: dict[str, list[str]] = field(default_factory=dict)  # head -> class names
    backbone: str | None = None


def config_uri(workdir: str, version: str) -> str:
    return storage.join(paths.model_dir(workdir, version), CONFIG_FILE)


def read_config(workdir: str, version: str) -> ModelConfig:
    """The typed config.json of ``version``; ModelArtifactError naming the file when unusable."""
    uri = config_uri(workdir, version)
    if not storage.exists(uri):
        raise ModelArtifactError(f"model {version} has no {CONFIG_FILE} at {uri}")
    try:
        raw = json.loads(storage.read_text(uri))
    except (storage.StorageError, ValueError) as e:
        raise ModelArtifactError(f"{uri} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ModelArtifactError(f"{uri} must hold a JSON object")
    try:
        return ModelConfig(
            version=str(raw.get("version") or version),
            embedding_dim=int(raw["embedding_dim"]),
            image_size=int(raw["image_size"]),
            date=str(raw["date"]) if raw.get("date") else None,
            heads=tuple(raw.get("heads", ())),
            vocabularies={k: list(v) for k, v in raw.get("vocabularies", {}).items()},
            backbone=raw.get("backbone"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelArtifactError(
            f"{uri} needs integer embedding_dim and image_size: {type(e).__name__}: {e}"
        ) from e


def published_version(workdir: str) -> str:
    """The version ``models/PUBLISHED`` names; ModelArtifactError when none, empty or garbled
    (an empty pointer is reported as such, with the command that clears it)."""
    pointer = paths.published_model_pointer(workdir)
    try:
        version = pointers.read_pointer(pointer).value
    except pointers.PointerError as e:
        raise ModelArtifactError(str(e)) from e
    if not version:
        raise ModelArtifactError(
            f"no published model at {pointer}: train and gate a model first, or name one with --model"
        )
    return version


def resolve(workdir: str, version: str | None = None) -> ModelConfig:
    """The config of ``version``, or of the published model when ``version`` is None."""
    return read_config(workdir, version or published_version(workdir))


def check_saved_model(uri: str) -> None:
    """Cheap structural check before any work: the files a SavedModel cannot load without."""
    for name in ("saved_model.pb", "variables/variables.index"):
        file_uri = storage.join(uri, name)
        if not storage.exists(file_uri):
            raise ModelArtifactError(f"no SavedModel at {uri} ({name} is missing)")


@dataclass(frozen=True)
class QueryViews:
    """Query photos as views: view 0 the whole frame, then the localiser's boxes, best first."""

    embeddings: np.ndarray  # [N, V, D] L2-normalised
    frame_boxes: np.ndarray  # [N, V, 4] (x0, y0, x1, y1) fractions of the letterboxed frame
    photo_boxes: np.ndarray  # [N, V, 4] the same boxes in fractions of the photo as seen
    box_scores: np.ndarray  # [N, V] the localiser's confidence (1 for the whole frame)


class Embedder:
    """A loaded embedder SavedModel; every method takes and returns numpy."""

    def __init__(self, saved_model: Any, uri: str) -> None:
        self._saved_model = saved_model  # keeps the signatures' variables alive
        self.uri = uri
        signatures = saved_model.signatures
        if BYTES_SIGNATURE not in signatures:
            raise ModelArtifactError(f"SavedModel at {uri} has no {BYTES_SIGNATURE!r} signature")
        self._bytes = signatures[BYTES_SIGNATURE]
        self._pixels = signatures[PIXELS_SIGNATURE] if PIXELS_SIGNATURE in signatures else None
        self.image_size: int | None = None
        if self._pixels is not None:
            spec = self._pixels.structured_input_signature[1][PIXELS_INPUT]
            self.image_size = int(spec.shape[1])

    @classmethod
    def load(cls, uri: str) -> Embedder:
        """Load the SavedModel at ``uri`` (any URI); ModelArtifactError naming it if missing/broken."""
        import tensorflow as tf

        check_saved_model(uri)
        start = time.perf_counter()
        try:
            local = storage.local_dir(uri)
            model = tf.saved_model.load(local)
        except Exception as e:  # a truncated protobuf or variables file: TF raises many types
            raise ModelArtifactError(
                f"cannot load SavedModel at {uri}: {type(e).__name__}: {str(e)[:300]}"
            ) from e
        _log.info("loaded %s in %.1fs", uri, time.perf_counter() - start)
        return cls(model, uri)

    @classmethod
    def open(cls, workdir: str, version: str) -> Embedder:
        return cls.load(paths.embedder_dir(workdir, version))

    def has_pixel_signature(self) -> bool:
        return self._pixels is not None

    def has_query_signature(self) -> bool:
        """Whether the model ships a localiser (a query photo as the whole frame plus boxes)."""
        return QUERY_PIXELS_SIGNATURE in self._saved_model.signatures

    def embed_query(self, photos: Sequence[bytes]) -> QueryViews:
        """Shoppers' photos, decoded by the safe Pillow decoder at the query size, as the whole
        frame plus the localiser's boxes; a model without a localiser gives the whole frame only.
        Raises ``images.ImageError`` for a bad photo."""
        import tensorflow as tf

        from core import images

        if not self.has_query_signature():
            emb = self.embed_photos(photos)[:, None, :]
            whole = np.tile(np.array([[[0.0, 0.0, 1.0, 1.0]]], np.float32), (len(photos), 1, 1))
            return QueryViews(emb, whole, whole, np.ones((len(photos), 1), np.float32))
        signature = self._saved_model.signatures[QUERY_PIXELS_SIGNATURE]
        inputs = signature.structured_input_signature[1]
        size = int(inputs[PIXELS_INPUT].shape[1])
        decoded = [images.decode_frame(p, size) for p in photos]
        feed = {PIXELS_INPUT: tf.constant(np.stack([d[0] for d in decoded]))}
        # The whole photo exactly as the catalog's photos are embedded (Pillow's letterbox at the
        # model's size), so a listing's own photo scores 1.0 against itself.
        takes_whole = WHOLE_INPUT in inputs
        if takes_whole:
            feed[WHOLE_INPUT] = tf.constant(np.stack([self.decode(p) for p in photos]))
        out = signature(**feed)
        frame_boxes = out["boxes"].numpy()
        photo_boxes = np.array(
            [
                [images.frame_to_photo(tuple(b), content) for b in boxes]
                for boxes, (_, content) in zip(frame_boxes, decoded, strict=True)
            ],
            np.float32,
        )
        embeddings = np.asarray(out["embedding"].numpy(), np.float32)
        if not takes_whole:  # a model exported before the signature took the whole photo
            embeddings[:, 0] = self.embed_photos(photos)
        return QueryViews(
            embeddings,
            frame_boxes,
            photo_boxes,
            out["box_scores"].numpy(),
        )

    def embed_pixels(self, pixels: np.ndarray) -> Outputs:
        """uint8 [N, S, S, 3] (safely decoded, letterboxed) -> model outputs, one batch."""
        import tensorflow as tf

        if self._pixels is None:
            raise ModelArtifactError(
                f"SavedModel at {self.uri} has no {PIXELS_SIGNATURE!r} signature"
            )
        batch = np.asarray(pixels)
        if (
            batch.dtype != np.uint8
            or batch.ndim != 4
            or batch.shape[1:]
            != (
                self.image_size,
                self.image_size,
                3,
            )
        ):
            raise ValueError(
                f"expected uint8 [N, {self.image_size}, {self.image_size}, 3], got {batch.dtype} {batch.shape}"
            )
        out = self._pixels(**{PIXELS_INPUT: tf.constant(batch)})
        return {k: v.numpy() for k, v in out.items()}

    def embed_bytes(self, photos: Sequence[bytes]) -> Outputs:
        """Encoded photos through the raw-bytes signature (decoded in the graph), one batch."""
        import tensorflow as tf

        out = self._bytes(**{BYTES_INPUT: tf.constant(list(photos), dtype=tf.string)})
        return {k: v.numpy() for k, v in out.items()}

    def decode(self, photo: bytes) -> np.ndarray:
        """The safe Pillow decode at the model's size; raises ``images.ImageError`` for a bad photo."""
        from core import images

        if self.image_size is None:
            raise ModelArtifactError(
                f"SavedModel at {self.uri} has no {PIXELS_SIGNATURE!r} signature"
            )
        return images.decode_image(photo, self.image_size)

    def embed_photos(
        self, photos: Sequence[bytes], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Encoded photos -> L2-normalised embeddings [N, D], decoded by the safe Pillow decoder."""
        return self.embed_decoded([self.decode(p) for p in photos], batch_size)

    def embed_decoded(
        self, pixels: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Already decoded photos (``decode``) -> embeddings [N, D], in batches."""
        out = [
            np.asarray(
                self.embed_pixels(np.stack(pixels[i : i + batch_size]))["embedding"], np.float32
            )
            for i in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
