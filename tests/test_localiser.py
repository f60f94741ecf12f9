"""The product localiser: masks from studio photos, synthetic scenes, boxes, crops, training."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

tf = pytest.importorskip("tensorflow")

from benchmarks.localiser_quality import studio_photos  # noqa: E402
from models.localiser import (  # noqa: E402
    box_iou,
    build_localiser,
    crop_boxes,
    item_masks,
    propose_boxes,
    recall_at_iou,
    synth_scenes,
    train_localiser,
)
from models.localiser_data import SceneStyle  # noqa: E402


def _jpeg(rgb: np.ndarray, quality: int = 92) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=quality
    )
    return np.asarray(Image.open(buf).convert("RGB"))


def _studio_photo(
    colour: tuple[float, float, float], seam: float | None = None, size: int = 96
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A product (an ellipse) on a light sweep with a soft shadow below it, saved as a listing
    photo is (JPEG 92): (pixels, the product's mask, the shadow-only region)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    mask = ((xx - 0.5) / 0.28) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 1
    blurred = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(3))
    shadow = np.roll(np.asarray(blurred, np.float32) / 255, 5, axis=0)
    sweep = (0.94 - 0.05 * yy)[..., None] * np.array([1.0, 0.99, 0.97])
    rgb = np.where(mask[..., None], colour, sweep * (1 - 0.3 * shadow[..., None]))
    if seam is not None:  # a white product on white shows only its seam
        inner = ((xx - 0.5) / 0.28) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 0.9
        rgb = np.where((mask & ~inner)[..., None], seam, rgb)
    # JPEG bleeds the product's colour a pixel or two out: the shadow is what lies beyond that.
    near = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5)))
    near = near > 0
    return _jpeg(rgb), mask, (shadow > 0.3) & ~near


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    ("colour", "seam"),
    [((0.1, 0.3, 0.8), None), ((0.55, 0.55, 0.55), None), ((0.98, 0.98, 0.98), 0.6)],
    ids=["blue", "grey", "white-with-seam"],
)
def test_item_masks_find_the_product_but_not_its_shadow(
    colour: tuple[float, float, float], seam: float | None
) -> None:
    pixels, truth, shadow = _studio_photo(colour, seam)
    mask = item_masks(pixels[None])[0]
    assert _iou(mask, truth) > 0.8
    assert mask[shadow].mean() < 0.2


def test_item_masks_on_a_catalog_of_stand_in_studio_photos() -> None:
    photos, truth = studio_photos(60, 96, np.random.default_rng(3))
    masks = item_masks(photos)
    ious = [_iou(m, t) for m, t in zip(masks, truth, strict=True)]
    assert np.mean(ious) > 0.85


def test_synth_scene_box_is_the_tight_box_of_the_main_items_pixels() -> None:
    """Render the same scenes twice, the item magenta then green: the pixels that differ are
    the item's, and the true box must enclose exactly them."""
    size = 96
    _, masks = studio_photos(1, 96, np.random.default_rng(0))
    magenta = np.where(masks[..., None], np.uint8([255, 0, 255]), np.uint8(240))
    green = np.where(masks[..., None], np.uint8([0, 255, 0]), np.uint8(240))
    style = SceneStyle(blur=0.0, jpeg=0.0)  # both spread the item's pixels a little
    a, boxes = synth_scenes(magenta, masks, 40, size, np.random.default_rng(7), style)
    b, boxes_b = synth_scenes(green, masks, 40, size, np.random.default_rng(7), style)
    np.testing.assert_array_equal(boxes, boxes_b)
    diff = np.abs(a.astype(int) - b.astype(int)).max(axis=-1)
    for d, box in zip(diff, boxes, strict=True):
        ys, xs = np.nonzero(d > 0.4 * d.max())  # the item's mostly opaque pixels
        seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / size
        np.testing.assert_allclose(seen, box, atol=1.5 / size)


def test_synth_scenes_place_the_item_whole_at_20_to_60_percent_of_the_frame() -> None:
    photos, _ = studio_photos(12, 96, np.random.default_rng(1))
    scenes, boxes = synth_scenes(photos, item_masks(photos), 200, 128, np.random.default_rng(2))
    assert scenes.shape == (200, 128, 128, 3) and scenes.dtype == np.uint8
    assert boxes.dtype == np.float32
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    tolerance = 2 / 128  # the alpha > 50% box after resampling
    assert longer.min() >= 0.2 - tolerance and longer.max() <= 0.6 + tolerance
    assert longer.max() - longer.min() > 0.3  # the whole range is used
    assert (boxes >= 0).all() and (boxes <= 1).all()
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.abs(centres - 0.5).max() > 0.25  # off-centre, not only in the middle


def test_a_thin_product_shrunk_to_a_few_pixels_still_makes_scenes() -> None:
    """A one-pixel-wide diagonal product (a cable, a needle) at 160 px, pasted as a small
    distractor, keeps no pixel over half alpha after shrinking: scene synthesis must go on (it
    crashed a 160-px training's localiser)."""
    size = 160
    photos = np.full((2, size, size, 3), 240, np.uint8)
    masks = np.zeros((2, size, size), bool)
    line = np.arange(20, 140)
    masks[0, line, line] = True  # a diagonal hairline: its box is large, its pixels few
    masks[1, 40:120, 40:120] = True  # a plain square, the scenes' other item
    photos[masks] = 30
    scenes, boxes = synth_scenes(photos, masks, 64, 128, np.random.default_rng(3))
    assert scenes.shape == (64, 128, 128, 3)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_box_iou_and_recall_at_iou_on_hand_made_boxes() -> None:
    unit = np.array([0.0, 0.0, 0.5, 0.5])
    assert box_iou(unit, unit) == pytest.approx(1.0)
    assert box_iou(unit, [0.5, 0.5, 1.0, 1.0]) == 0.0
    assert box_iou([0.0, 0.0, 0.2, 0.1], [0.1, 0.0, 0.3, 0.1]) == pytest.approx(1 / 3)
    assert box_iou(np.stack([unit, unit]), unit).shape == (2,)
    true = np.array([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]])
    miss = [0.0, 0.6, 0.2, 0.8]
    pred = np.array([[true[0], miss, miss], [miss, miss, true[1]]])
    assert recall_at_iou(pred, true, 0.5, top=1) == 0.5
    assert recall_at_iou(pred, true, 0.5, top=2) == 0.5
    assert recall_at_iou(pred, true, 0.5, top=3) == 1.0
    with pytest.raises(ValueError):
        recall_at_iou(pred[:, 0], true)


def test_crop_boxes_cut_the_box_out_squared_and_pad_outside_the_frame_with_white() -> None:
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0, 8:24, 16:32] = [255, 0, 0]  # a red square
    frames[1, 6:58, 26:38] = [0, 0, 255]  # a tall blue bar
    boxes = np.array(
        [
            [[0.25, 0.125, 0.5, 0.375], [0.8, 0.8, 1.0, 1.0]],
            [[26 / 64, 6 / 64, 38 / 64, 58 / 64], [0.0, 0.0, 0.1, 0.1]],
        ],
        np.float32,
    )
    crops = crop_boxes(tf.constant(frames), tf.constant(boxes), 32, margin=0.0).numpy()
    assert crops.shape == (4, 32, 32, 3) and crops.dtype == np.uint8
    red = (crops[0, ..., 0] > 128) & (crops[0, ..., 2] < 50)
    assert red.mean() > 0.9
    # A corner box: the square beyond the frame's edge is white, inside it black.
    corner = crop_boxes(tf.constant(frames), tf.constant(boxes), 32, margin=1.0).numpy()[1]
    assert (corner[0, 0] == 0).all() and (corner[-1, -1] == 255).all()
    assert (corner == 255).all(axis=-1).mean() == pytest.approx(1 - 0.75**2, abs=0.05)
    # A tall box is made square, not stretched: the bar keeps its 12:52 shape.
    blue = crops[2, ..., 2] > 128
    assert blue.any(axis=0).mean() == pytest.approx(12 / 52, abs=0.05)
    assert blue.any(axis=1).mean() > 0.95
    assert (crops[3] == 0).all()  # frame 1's second box: frame-major order


class _Proposer(tf.Module):
    def __init__(self, model: object) -> None:
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def __call__(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        boxes, scores = propose_boxes(self.model, pixels, k=3, size=64)
        return {"boxes": boxes, "scores": scores}


def test_propose_boxes_in_a_tf_function_and_a_reloaded_saved_model(tmp_path) -> None:
    model = build_localiser(64)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 80, 80, 3), dtype=np.uint8)
    eager_boxes, eager_scores = propose_boxes(model, tf.constant(pixels), k=3, size=64)
    assert eager_boxes.shape == (2, 3, 4) and eager_scores.shape == (2, 3)
    b = eager_boxes.numpy()
    assert (b >= 0).all() and (b <= 1).all()
    assert (b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all()
    assert (np.diff(eager_scores.numpy(), axis=1) <= 0).all()  # best first
    tf.saved_model.save(_Proposer(model), str(tmp_path / "proposer"))
    reloaded = tf.saved_model.load(str(tmp_path / "proposer"))
    for out in (_Proposer(model)(tf.constant(pixels)), reloaded(tf.constant(pixels))):
        np.testing.assert_allclose(out["boxes"].numpy(), b, atol=1e-6)
        np.testing.assert_allclose(out["scores"].numpy(), eager_scores.numpy(), atol=1e-6)


@pytest.mark.slow
def test_a_short_training_finds_items_far_better_than_the_centred_box() -> None:
    photos, _ = studio_photos(100, 64, np.random.default_rng(5))
    lines: list[str] = []
    model, metrics = train_localiser(photos, size=64, steps=400, seed=0, log=lines.append)
    out = model(np.zeros((1, 64, 64, 3), np.float32))
    assert out["heatmap"].shape == (1, 8, 8, 1) and out["box"].shape == (1, 8, 8, 4)
    assert any("step 400/400" in line for line in lines)
    print(metrics)
    baseline = metrics["baseline_recall_at_iou_0.5"]
    assert metrics["recall_at_iou_0.5@1"] > max(2 * baseline, baseline + 0.15)
    assert metrics["recall_at_iou_0.5@3"] >= metrics["recall_at_iou_0.5@1"]
    assert 0 < metrics["mean_iou@1"] <= 1
