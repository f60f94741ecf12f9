"""Localiser quality: trained on a catalog's studio photos, does it find the item in clutter?

Trains ``models.localiser.train_localiser`` with its default settings on studio (listing)
photos: the first photo of each listing of a catalog snapshot (``--catalog``), or else stand-in
studio photos drawn procedurally (``models.localiser_data.studio_photos``). Prints the scene
synthesis rate on one core, the training time, and, on fresh cluttered scenes of held-out items,
recall of the true box at IoU >= 0.5 (top box, top 3) against the centred box of median size.

    python -m benchmarks.localiser_quality [--catalog CAT --date 2026-01-01] [--items 400]
        [--steps N] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

ITEM_SIZE = 96  # studio photos are decoded as the pipelines do, at the model's image size


def catalog_studio_photos(catalog: str, date: str, limit: int) -> np.ndarray:
    """uint8 [M, ITEM_SIZE, ITEM_SIZE, 3]: the first photo of up to ``limit`` listings."""
    from vsearch.core import catalog as contract
    from vsearch.core import images, storage
    from vsearch.core.snapshot import read_snapshot

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
    args = ap.parse_args(argv)

    from models.localiser import LOCALISER_SIZE, train_localiser
    from models.localiser_data import studio_photos

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
    _, metrics = train_localiser(photos, seed=args.seed, **steps)
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
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
