"""The model's input size chosen from the catalog's photos (preprocess's default), on every style."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import storage
from core.catalog import CatalogError
from models.config import default_epochs
from pipelines import input_size
from synthetic.bazaar import generate_bazaar_catalog
from synthetic.generate import generate_catalog
from synthetic.phone import generate_phone_catalog

DATE = "2026-01-01"


@pytest.mark.parametrize(("style", "expected"), [("generated", 96), ("bazaar", 96), ("phone", 160)])
def test_each_catalog_style_gets_the_size_that_won_on_it(
    tmp_path: Path, style: str, expected: int
) -> None:
    cat = str(tmp_path / style)
    if style == "phone":  # 256-px phone frames, the item small in them
        generate_phone_catalog(cat, listings=12, days=1, seed=3, workers=1, progress_every=0)
    elif style == "bazaar":  # 128-px squares (the generator's default)
        generate_bazaar_catalog(cat, listings=12, days=1, seed=3)
    else:
        generate_catalog(cat, listings=12, days=1, seed=3, workers=1, progress_every=0)

    chosen = input_size.measure(cat, DATE)

    assert chosen.size == expected
    assert chosen.kind == "review" and chosen.photos > 0
    assert f"{chosen.photos} review photos" in chosen.reason()
    assert default_epochs(chosen.size) == (50 if expected == 160 else 20)


def test_listing_photos_are_measured_when_the_day_has_no_reviews(tmp_path: Path) -> None:
    cat = str(tmp_path / "c")
    generate_phone_catalog(cat, listings=6, days=1, seed=3, workers=1, progress_every=0)
    for name in storage.list_prefix(storage.join(cat, f"dt={DATE}")):
        if storage.basename(name).startswith("reviews"):
            storage.delete([name])

    chosen = input_size.measure(cat, DATE)

    assert (chosen.kind, chosen.size) == ("listing", 160)


def test_unreadable_photos_are_left_out_and_none_readable_falls_back_to_96(tmp_path: Path) -> None:
    cat = str(tmp_path / "c")
    generate_catalog(cat, listings=6, days=1, seed=3, image_size=256, workers=1, progress_every=0)
    assert input_size.measure(cat, DATE).size == 160
    for photo in (tmp_path / "c").rglob("*.jpg"):
        photo.write_bytes(b"not a photo")

    chosen = input_size.measure(cat, DATE)

    assert (chosen.size, chosen.median_longer_side) == (96, None)
    assert "no photo of the snapshot could be measured" in chosen.reason()


def test_a_day_without_a_listings_table_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no listings table"):
        input_size.measure(str(tmp_path), DATE)


def test_the_rule_is_the_median_longer_side_against_200_px() -> None:
    assert input_size.choose([128] * 50, "review").size == 96
    assert input_size.choose([256] * 50, "review").size == 160
    assert input_size.choose([199, 200, 1000], "review").size == 160  # median 200
    # one huge photo is not the median
    assert input_size.choose([128, 150, 4000], "review").size == 96


def _big_jpeg(width: int, height: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "JPEG", quality=95, exif=b"Exif\x00\x00" + b"\x00" * 60_000)
    return out.getvalue()


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_phone_sized_photo_is_measured_from_its_first_bytes(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    # A 4:3 phone frame of several MB (noise does not compress) behind a 60 KB EXIF block:
    # its size is read from the first HEAD_BYTES, on the local filesystem and on GCS.
    photo = _big_jpeg(1600, 1200)
    assert len(photo) > 4 * input_size.HEAD_BYTES
    base = request.getfixturevalue("gcs_bucket") if where == "gcs" else str(tmp_path)
    uri = storage.join(base, "reviews", "r1.jpg")
    storage.write_bytes(uri, photo)

    assert len(storage.read_head(uri, input_size.HEAD_BYTES)) == input_size.HEAD_BYTES
    assert input_size._longer_side(uri) == 1600
    assert storage.read_head(uri, 10 * len(photo)) == photo  # a short file: all of it
