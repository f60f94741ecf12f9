"""Backbones: image [S, S, 3] (normalised) -> pooled feature vector, plus transfer-learning helpers."""

from __future__ import annotations

import os
import tempfile

import keras

from core import storage

# Short from-scratch runs take a few hundred steps: the default 0.99 would leave the moving
# statistics used at eval/serving time far behind the weights.
BN_MOMENTUM = 0.9


def small_cnn(image_size: int) -> keras.Model:
    """A stride-2 stem and four conv stages with BatchNorm (~0.9M parameters, ~0.15 GMAC at 96 px):
    trains from scratch in minutes on a 2-core CPU, unlike ImageNet-sized backbones."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Conv2D(32, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, (filters, convs) in enumerate(((48, 1), (96, 1), (192, 2), (256, 2))):
        for j in range(convs):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"s{i}_conv{j}"
            )(x)
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"s{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"s{i}_relu{j}")(x)
        if i < 3:
            x = keras.layers.MaxPooling2D(2, name=f"s{i}_pool")(x)
    # Average and max pooling together keep both "how much" and "whether" of a visual pattern.
    avg = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    mx = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    return keras.Model(inputs, keras.layers.Concatenate(name="pool")([avg, mx]), name="small_cnn")


def build_backbone(name: str, image_size: int) -> keras.Model:
    shape = (image_size, image_size, 3)
    if name == "small_cnn":
        return small_cnn(image_size)
    if name == "mobilenet_v3_small":
        # include_preprocessing=False: inputs are already normalised by the TFT graph.
        return keras.applications.MobileNetV3Small(
            input_shape=shape,
            include_top=False,
            weights=None,
            pooling="avg",
            include_preprocessing=False,
        )
    if name == "efficientnet_b0":
        return keras.applications.EfficientNetB0(
            input_shape=shape, include_top=False, weights=None, pooling="avg"
        )
    if name == "resnet50":
        return keras.applications.ResNet50(
            input_shape=shape, include_top=False, weights=None, pooling="avg"
        )
    raise ValueError(f"unknown backbone {name!r}")


def load_backbone_weights(backbone: keras.Model, uri: str) -> None:
    """Load a user-supplied Keras weights file (``*.weights.h5``) from any URI into the backbone.

    Keras reads only local files, so the bytes are copied to a temporary file of the same name.
    A file that does not match the architecture raises Keras' own error, naming the layer.
    """
    if not storage.exists(uri):
        raise FileNotFoundError(f"--backbone-weights {uri} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, storage.basename(uri))
        with open(local, "wb") as f:  # a local temp file, not a URI
            f.write(storage.read_bytes(uri))
        backbone.load_weights(local)


def freeze_all_but_top(backbone: keras.Model, trainable_layers: int) -> list[str]:
    """Freeze every weighted layer except the top ``trainable_layers``; returns the trainable names.

    Frozen BatchNorm layers also stop updating their moving statistics (Keras runs them in
    inference mode), so frozen means bit-for-bit unchanged.
    """
    weighted = [layer for layer in backbone.layers if layer.weights]
    keep = weighted[len(weighted) - trainable_layers :] if trainable_layers else []
    keep_ids = {id(layer) for layer in keep}
    for layer in weighted:
        layer.trainable = id(layer) in keep_ids
    return [layer.name for layer in keep]
