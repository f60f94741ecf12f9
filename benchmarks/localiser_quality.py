"""Localiser quality: trained on a catalog's studio photos, does it find the item in clutter?

Trains ``models.localiser.train_localiser`` with its default settings on studio (listing)
photos: the first photo of each listing of a catalog snapshot (``--catalog``), or else stand-in
studio photos drawn procedurally (``studio_photos``, which also gives their true masks: the
tests use it to check ``item_masks``). Prints the scene
synthesis rate on one core, the training time, and, on fresh cluttered scenes of held-out items,
recall of the true box at IoU >= 0.5 (top box, top 3) against the centred box of median size.
With ``--buyer-catalog`` (a catalog whose generator recorded each buyer photo's true item box,
e.g. ``vsearch generate-catalog --style phone``), the same recall on its buyer photos, read as
the query path reads them (letterboxed square, boxes in its fractions): the localiser's real job.

    python -m benchmarks.localiser_quality [--catalog CAT --date 2026-01-01] [--items 400]
        [--steps N] [--seed 0] [--buyer-catalog CAT]
"""

from __future__ import annotations

import argparse
import io
import time
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ITEM_SIZE = 96  # studio photos are decoded as the pipelines do, at the model's image size


def _product_shape(size: int, rng: np.random.Generator) -> np.ndarray:
    """A product silhouette, bool [size, size]: a body (ellipse, rounded box or polygon),
    sometimes a neck on top and a handle on one side."""
    shape = Image.new("L", (size, size))
    draw = ImageDraw.Draw(shape)
    w, h = rng.uniform(0.35, 0.7, 2) * size
    cx, cy = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    kind = rng.integers(0, 3)
    if kind == 0:
        draw.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fill=255)
    elif kind == 1:
        radius = float(rng.uniform(0, 0.3) * min(w, h))
        draw.rounded_rectangle((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), radius, fill=255)
    else:
        k = int(rng.integers(3, 8))
        angle = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * 2 * np.pi / k + rng.uniform(0, 6.3)
        r = rng.uniform(0.7, 1.0, k)
        xs, ys = cx + w / 2 * r * np.cos(angle), cy + h / 2 * r * np.sin(angle)
        draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), 255)
    if rng.random() < 0.4:
        neck = w * rng.uniform(0.2, 0.4)
        draw.rectangle((cx - neck / 2, cy - h * rng.uniform(0.6, 0.75), cx + neck / 2, cy), 255)
    if rng.random() < 0.4:
        draw.ellipse(
            (cx + w * 0.3, cy - h / 4, cx + w * 0.7, cy + h / 4),
            outline=255,
            width=max(2, size // 20),
        )
    return np.asarray(shape) > 127


def studio_photos(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` listing-like photos uint8 [n, size, size, 3] and their true product masks [n, size,
    size]: one product (``_product_shape``) in a random colour, a fifth of them white or cream,
    flat, striped or dotted, shaded from one side, on a light sweep with a soft shadow, saved as
    JPEG at quality 92 as listing photos are."""
    photos = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    lin = np.linspace(0.0, 1.0, size)
    yy, xx = lin[:, None, None], lin[None, :, None]
    for i in range(n):
        mask = _product_shape(size, rng)
        light = rng.random() < 0.2
        base = rng.uniform(0.85, 1.0, 3) if light else rng.random(3)
        f = rng.uniform(4, 12) * 2 * np.pi
        pattern = rng.integers(0, 3)
        if pattern == 1:
            on = np.sin(f * (xx + yy)) > 0.3
        elif pattern == 2:
            on = np.sin(f * xx) * np.sin(f * yy) > 0.6
        else:
            on = np.zeros((size, size, 1), bool)
        shading = 1.0 - rng.uniform(0.1, 0.3) * (xx if rng.random() < 0.5 else 1 - xx)
        colour = np.where(on, rng.random(3), base) * shading
        if light and rng.random() < 0.5:  # a seam: what shows a white product on white
            inner = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))
            outline = mask & (np.asarray(inner) == 0)
            colour = np.where(outline[..., None], base * 0.7, colour)
        sweep = rng.uniform(0.88, 0.985) + rng.uniform(-0.015, 0.015, 3) - 0.05 * yy * rng.random()
        blurred = Image.fromarray(mask.astype(np.uint8) * 255).filter(
            ImageFilter.GaussianBlur(size / 40)
        )
        shadow = np.roll(np.asarray(blurred, np.float32) / 255.0, max(1, size // 30), axis=0)
        sweep = sweep * (1 - rng.uniform(0.1, 0.3) * shadow[..., None])
        rgb = np.clip(np.where(mask[..., None], colour, sweep) * 255.0 + 0.5, 0, 255)
        buf = io.BytesIO()
        Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=92)
        photos[i] = np.asarray(Image.open(buf).convert("RGB"))
        masks[i] = mask
    return photos, masks


def catalog_studio_photos(catalog: str, date: str, limit: int) -> np.ndarray:
    """uint8 [M, ITEM_SIZE, ITEM_SIZE, 3]: the first photo of up to ``limit`` listings."""
    from core import catalog as contract
    from core import images, storage
    from core.snapshot import read_snapshot

    photos = []
    for listing in read_snapshot(catalog, date).listings[:limit]:
        try:
            data = storage.read_bytes(contract.listing_images(listing)[0].uri)
            photos.append(images.decode_image(data, ITEM_SIZE))
        except (OSError, images.ImageError):
            continue  # the pipelines dead-letter such a photo; here it is just not used
    if not photos:
        raise ValueError(f"no decodable listing photo in {catalog} dt={date}")
    return np.stack(photos)


def buyer_photo_recall(model: Any, catalog: str, date: str, size: int) -> dict[str, float]:
    """Recall of the true item box at IoU >= 0.5 (top box, top 3) and mean IoU of the top box on
    every buyer photo of ``catalog`` with a recorded box."""
    from core import images, storage
    from core.snapshot import read_snapshot
    from models.localiser import box_iou, propose_boxes, recall_at_iou
    from synthetic import truth

    boxes = truth.read_review_boxes(catalog)
    root = storage.normalize(catalog).rstrip("/") + "/"
    frames, true = [], []
    for review in read_snapshot(catalog, date).reviews:
        b = boxes.get(review.image_uri.removeprefix(root))
        if b is None:
            continue
        frame, content = images.decode_frame(storage.read_bytes(review.image_uri), size)
        frames.append(frame)
        true.append(images.photo_to_frame(b.box, content))
    if not frames:
        raise ValueError(f"{catalog} records no buyer photo boxes (generate it with --style phone)")
    px, truth_boxes = np.stack(frames), np.array(true, np.float32)
    pred = np.concatenate(
        [
            propose_boxes(model, px[i : i + 128], k=3, size=size)[0].numpy()
            for i in range(0, len(px), 128)
        ]
    )
    return {
        "photos": float(len(px)),
        "recall_at_iou_0.5@1": recall_at_iou(pred, truth_boxes, 0.5, 1),
        "recall_at_iou_0.5@3": recall_at_iou(pred, truth_boxes, 0.5, 3),
        "mean_iou@1": float(box_iou(pred[:, 0], truth_boxes).mean()),
    }


def synthesis_rate(photos: np.ndarray, size: int, n: int = 512) -> float:
    """Scenes per second of ``synth_scenes`` in this process (one core)."""
    from models.localiser_data import item_masks, synth_scenes

    masks = item_masks(photos)
    rng = np.random.default_rng(0)
    synth_scenes(photos, masks, 32, size, rng)  # warm up
    start = time.perf_counter()
    for _ in range(n // 32):
        synth_scenes(photos, masks, 32, size, rng)
    return (n // 32) * 32 / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.localiser_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--catalog", default=None, help="catalog root (default: drawn stand-ins)")
    ap.add_argument("--date", default="2026-01-01", help="the snapshot's day, with --catalog")
    ap.add_argument("--items", type=int, default=400, help="studio photos to learn from")
    ap.add_argument("--steps", type=int, default=None, help="default: train_localiser's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--buyer-catalog", default=None, help="also measure on this catalog's boxed buyer photos"
    )
    args = ap.parse_args(argv)

    from models.localiser import LOCALISER_SIZE, train_localiser

    if args.catalog:
        photos = catalog_studio_photos(args.catalog, args.date, args.items)
        source = f"{len(photos)} listing photos of {args.catalog} dt={args.date}"
    else:
        photos, _ = studio_photos(args.items, ITEM_SIZE, np.random.default_rng(args.seed))
        source = f"{len(photos)} drawn stand-in studio photos"
    print(f"items: {source}")
    print(
        f"synthesis: {synthesis_rate(photos, LOCALISER_SIZE):.0f} scenes/s at {LOCALISER_SIZE} px"
    )
    steps = {"steps": args.steps} if args.steps else {}
    model, metrics = train_localiser(photos, seed=args.seed, **steps)
    print(f"training: {metrics['train_seconds']:.0f} s")
    print("| held-out scenes | recall@IoU0.5 top-1 | top-3 | mean IoU top-1 |")
    print("|---|---:|---:|---:|")
    print(
        f"| localiser | {metrics['recall_at_iou_0.5@1']:.3f} "
        f"| {metrics['recall_at_iou_0.5@3']:.3f} | {metrics['mean_iou@1']:.3f} |"
    )
    print(
        f"| centred box of median size | {metrics['baseline_recall_at_iou_0.5']:.3f} | - "
        f"| {metrics['baseline_mean_iou']:.3f} |"
    )
    if args.buyer_catalog:
        buyer = buyer_photo_recall(model, args.buyer_catalog, args.date, LOCALISER_SIZE)
        print(
            f"| buyer photos of {args.buyer_catalog} ({buyer['photos']:.0f}) "
            f"| {buyer['recall_at_iou_0.5@1']:.3f} | {buyer['recall_at_iou_0.5@3']:.3f} "
            f"| {buyer['mean_iou@1']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
