"""The phone catalog style: valid snapshots, deterministic, and its recorded boxes are where the item is."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from core import images
from core.snapshot import read_snapshot
from synthetic import phone, phone_photos, truth
from tests.image_fixtures import tree_digest


def test_cli_writes_valid_snapshots_with_a_box_for_every_buyer_photo(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    proc = subprocess.run(
        [sys.executable, "-m", "vsearch", "generate-catalog", str(out), "--style", "phone"]
        + ["--listings", "60", "--days", "2", "--seed", "4", "--image-size", "160"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    day1, day2 = read_snapshot(str(out), "2026-01-01"), read_snapshot(str(out), "2026-01-02")
    assert not day1.rejected and not day2.rejected
    assert {x.listing_id for x in day1.listings} != {x.listing_id for x in day2.listings}
    boxes = truth.read_review_boxes(str(out))
    reviewed = {r.image_uri.removeprefix(str(out) + "/") for r in day2.reviews}
    assert reviewed and reviewed <= set(boxes)  # every buyer photo has its true box
    sides = np.array([b.item_side for b in boxes.values()])
    assert 0.15 <= sides.min() and sides.max() <= 0.75 and np.median(sides) < 0.5
    for b in boxes.values():
        x0, y0, x1, y1 = b.box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    # Listing photos are non-square studio shots; buyer photos 4:3, some EXIF-turned.
    first = Image.open(out / day1.listings[0].image_uris[0])
    assert first.width != first.height and max(first.size) == 160
    assert {b.exif_orientation for b in boxes.values()} & {6, 8}
    # Every photo decodes with the pipelines' safe decoder.
    for ref in day2.images()[:30]:
        images.decode_image(Path(ref.uri).read_bytes(), size=64)


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    phone.generate_phone_catalog(str(a), listings=12, days=1, seed=9, image_size=96, workers=1)
    phone.generate_phone_catalog(str(b), listings=12, days=1, seed=9, image_size=96, workers=2)
    assert tree_digest(a) == tree_digest(b)


def _square_layer(alpha: int, n: int = 64) -> Image.Image:
    """A product layer that is a plain magenta square (alpha 0: nothing at all)."""
    px = np.zeros((n, n, 4), np.uint8)
    px[8:-8, 8:-8] = (255, 0, 255, 255) if alpha else (0, 0, 0, 0)
    return Image.fromarray(px, "RGBa")


def test_the_box_is_where_the_item_is_as_a_viewer_sees_the_photo() -> None:
    listing = phone.draw_listing(1, 0)
    seen = set()
    for k in range(40):
        # The same photo with the item and without it (the same draws): they differ where it is.
        shots = [
            phone_photos.review_photo(
                listing.num, _square_layer(a), 192, np.random.default_rng([5, k]), 1
            )
            for a in (255, 0)
        ]
        (data, box, side, orientation), (empty, *_) = shots
        seen.add(orientation)
        img = Image.open(io.BytesIO(data))
        assert img.size in ((192, 144), (144, 192))
        # As a viewer sees it: EXIF applied, letterboxed into 192 x 192 by the safe decoder.
        with_item = images.decode_image(data, size=192).astype(np.float32)
        without = images.decode_image(empty, size=192).astype(np.float32)
        ys, xs = np.nonzero(np.abs(with_item - without).sum(axis=-1) > 90)
        assert len(xs) > 30, f"photo {k}: item not visible"
        pw, ph = img.size if orientation == 1 else img.size[::-1]
        scale = 192 / max(pw, ph)
        ox, oy = (192 - pw * scale) / 2, (192 - ph * scale) / 2
        bx0, by0 = ox + box[0] * pw * scale, oy + box[1] * ph * scale
        bx1, by1 = ox + box[2] * pw * scale, oy + box[3] * ph * scale
        inside = (xs >= bx0 - 2) & (xs <= bx1 + 2) & (ys >= by0 - 2) & (ys <= by1 + 2)
        # The item is in its box (its soft shadow may peek out below) ...
        assert inside.mean() > 0.95, f"photo {k} (orientation {orientation}): item outside its box"
        # ... and the box is tight: the item (a turned, warped square) fills much of it.
        assert inside.sum() > 0.45 * (bx1 - bx0) * (by1 - by0), f"photo {k}: box too large"
        assert 0.15 < side < 0.85  # a turned square's box is up to 1.4x its side
    assert {1, 6, 8} <= seen
