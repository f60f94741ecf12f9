"""Tiny image files, good, odd and hostile, built in memory with PIL (seeded, deterministic)."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(
    color: tuple[int, int, int] = RED, size: tuple[int, int] = (32, 32), fmt: str = "PNG"
) -> bytes:
    return _save(Image.new("RGB", size, color), fmt)


def noisy_jpeg(size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return _save(Image.fromarray(arr, "RGB"), "JPEG", quality=90)


def truncated_jpeg() -> bytes:
    data = noisy_jpeg()
    return data[: len(data) // 2]


def text_named_jpg() -> bytes:
    return b"<html><body>404 Not Found</body></html>\n"


def cmyk_jpeg() -> bytes:
    """Pure red in CMYK (C=0, M=255, Y=255, K=0), written the way print workflows do."""
    return _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)


def rgba_png() -> bytes:
    """Left half opaque red, right half fully transparent (must become white, not black)."""
    arr = np.zeros((32, 32, 4), dtype=np.uint8)
    arr[:, :16] = (255, 0, 0, 255)
    arr[:, 16:] = (0, 0, 0, 0)
    return _save(Image.fromarray(arr, "RGBA"), "PNG")


def png16_gray() -> bytes:
    """16-bit greyscale: left half 65535 (white), right half 32768 (mid grey)."""
    arr = np.full((32, 32), 32768, dtype=np.uint16)
    arr[:, :16] = 65535
    return _save(Image.fromarray(arr, "I;16"), "PNG")


def gray_png() -> bytes:
    return _save(Image.new("L", (32, 32), 100), "PNG")


def palette_png_with_transparency() -> bytes:
    """Palette image: index 0 transparent, index 1 blue; left half 0, right half 1."""
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.paste(1, (16, 0, 32, 32))
    return _save(im, "PNG", transparency=0)


def animated_gif() -> bytes:
    """Two frames: red then blue; the first frame is the product photo."""
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20 (left red, right blue) with EXIF orientation 6 (display rotated 90 deg CW).

    Displayed, it is 20 wide x 40 tall with red on top and blue at the bottom.
    """
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    im = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(im, "JPEG", quality=95, exif=exif.tobytes())


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A ~100-byte PNG whose header claims width x height RGB pixels (2.7 GB decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def tree_digest(root: Path) -> str:
    """One sha256 over every file's relative path and bytes under ``root`` (byte-identical trees)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()
