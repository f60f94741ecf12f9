"""Safe decoding: each odd or hostile file either decodes to the right pixels or is refused."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from core import images
from tests import image_fixtures as fx

SIZE = 32


def _close(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


def test_sniff_uses_magic_bytes_not_names() -> None:
    assert images.sniff_format(fx.solid(fmt="PNG")) == "png"
    assert images.sniff_format(fx.noisy_jpeg()) == "jpeg"
    assert images.sniff_format(fx.animated_gif()) == "gif"
    assert images.sniff_format(fx.solid(fmt="WEBP")) == "webp"
    assert images.sniff_format(fx.solid(fmt="BMP")) == "bmp"
    assert images.sniff_format(fx.solid(fmt="TIFF")) == "tiff"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (fx.text_named_jpg(), "not an image"),
        (fx.truncated_jpeg(), "truncated or corrupt jpeg"),
        (fx.png_bomb(), "too many pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt png header"),
    ],
    ids=["zero-byte", "text-named-jpg", "truncated-jpeg", "header-only-bomb", "garbage-png"],
)
def test_refused_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(images.ImageError) as e:
        images.decode_image(data, SIZE)
    assert e.value.reason.startswith(reason), e.value.reason


def test_bomb_refused_from_header_without_allocating() -> None:
    data = fx.png_bomb(30000, 30000)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(images.ImageError, match="too many pixels"):
        images.decode_image(data, SIZE)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 5_000_000  # the decoded image would be 2.7 GB


def test_our_pixel_limit_applies_below_pils() -> None:
    # 8000x8000 = 64 MP passes PIL's own guard (89 MP) but not our default 50 MP.
    with pytest.raises(images.ImageError, match="too many pixels: 8000x8000"):
        images.decode_image(fx.png_bomb(8000, 8000), SIZE)
    with pytest.raises(images.ImageError, match="too many pixels"):
        images.decode_image(fx.solid(size=(40, 30)), SIZE, max_pixels=1000)


def test_png_named_jpg_decodes() -> None:
    rgb = images.decode_image(fx.solid(fx.RED, fmt="PNG"), SIZE)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert _close(rgb[16, 16], fx.RED, 0)


def test_cmyk_jpeg_gives_true_colours() -> None:
    rgb = images.decode_image(fx.cmyk_jpeg(), SIZE)
    assert _close(rgb[16, 16], fx.RED), rgb[16, 16]


def test_rgba_composited_on_white() -> None:
    rgb = images.decode_image(fx.rgba_png(), SIZE)
    assert _close(rgb[16, 4], fx.RED, 0)
    assert _close(rgb[16, 28], (255, 255, 255), 0)  # transparent -> white, not black


def test_16bit_png_scaled_not_clipped() -> None:
    rgb = images.decode_image(fx.png16_gray(), SIZE)
    assert _close(rgb[16, 4], (255, 255, 255), 0)
    assert _close(rgb[16, 28], (128, 128, 128), 1)  # 32768 >> 8, not clipped to 255


def test_grayscale_and_palette() -> None:
    assert _close(images.decode_image(fx.gray_png(), SIZE)[5, 5], (100, 100, 100), 0)
    rgb = images.decode_image(fx.palette_png_with_transparency(), SIZE)
    assert _close(rgb[16, 4], (255, 255, 255), 0)  # transparent index -> white
    assert _close(rgb[16, 28], fx.BLUE, 0)


def test_animated_gif_first_frame() -> None:
    assert _close(images.decode_image(fx.animated_gif(), SIZE)[16, 16], fx.RED, 2)


def test_exif_orientation_applied_and_letterboxed() -> None:
    rgb = images.decode_image(fx.exif_rotated_jpeg(), SIZE)
    # Displayed 20x40 (portrait): red on top, blue below, white bars left and right.
    assert _close(rgb[6, 16], fx.RED, 30), rgb[6, 16]
    assert _close(rgb[26, 16], fx.BLUE, 30), rgb[26, 16]
    assert _close(rgb[16, 1], (255, 255, 255), 0)


def test_letterbox_keeps_whole_product_and_aspect() -> None:
    rgb = images.decode_image(fx.solid(fx.BLUE, size=(64, 16)), SIZE)
    # 64x16 -> 32x8, centred vertically: rows 12..19 blue, the rest white padding.
    assert _close(rgb[16, 0], fx.BLUE, 0) and _close(rgb[16, 31], fx.BLUE, 0)
    assert _close(rgb[2, 16], (255, 255, 255), 0) and _close(rgb[29, 16], (255, 255, 255), 0)


def test_large_jpeg_decodes_at_target_size() -> None:
    rgb = images.decode_image(fx.noisy_jpeg(size=512), 64)
    assert rgb.shape == (64, 64, 3)


def test_encode_png_round_trips() -> None:
    rgb = images.decode_image(fx.noisy_jpeg(), SIZE)
    again = images.decode_image(images.encode_png(rgb), SIZE)
    assert np.array_equal(rgb, again)
    assert images.sha256_hex(b"abc").startswith("ba7816bf")
