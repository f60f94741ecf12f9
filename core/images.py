"""Safe image decoding: untrusted bytes in, a clean ``size x size`` RGB uint8 array out.

Pure functions, no Beam: the Beam transforms (``transforms/read_images.py``), training
preprocessing, embedding and query all call :func:`decode_image`, so every path sees the same
pixels for the same bytes.

What "safe" means here, in the order the checks run:

1. The format is sniffed from the magic bytes, never from the file name: a PNG named ``.jpg``
   decodes, a text file named ``.jpg`` is refused. Only JPEG, PNG, GIF, WEBP, BMP and TIFF are
   accepted, and PIL is told to try only the sniffed decoder.
2. The pixel count is checked from the header *before* any pixel is decoded (``Image.open``
   reads only the header), so a 30000x30000 "bomb" costs microseconds and no memory. PIL's own
   bomb guard (``Image.MAX_IMAGE_PIXELS``) stays on as a second line; ``max_pixels`` must not
   exceed it.
3. Truncated or corrupt files raise instead of being padded with grey
   (``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False; ``load()`` is called explicitly).
4. Colour is normalised: EXIF orientation applied; CMYK (and RGB with an embedded ICC profile,
   e.g. Display P3 phone photos) converted to sRGB through the profile when there is one;
   palette, grey+alpha and RGBA composited on white; 16-bit greyscale scaled to 8 bits
   (``>> 8``, not clipped); animated GIF/WEBP/PNG give their first frame.
5. Resize by **letterboxing**: scale the longer side to ``size``, keep the aspect ratio, and pad
   the rest with white. Centre-cropping would cut off the ends of long products (scarves,
   necklaces, rugs) and stretching would distort the very silhouette the model learns ``shape``
   from; white padding matches the studio backgrounds of listing photos and the colour alpha
   is composited on.

Every refusal is an :class:`ImageError` whose ``reason`` is a short, stable phrase suitable for
a dead-letter record.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

DEFAULT_MAX_PIXELS = 50_000_000  # a 50 MP camera photo is fine; anything bigger is suspect
PAD_COLOR = (255, 255, 255)

# (magic prefix, offset, our name, PIL's format name)
_MAGIC: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpeg", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "png", "PNG"),
    (b"GIF87a", 0, "gif", "GIF"),
    (b"GIF89a", 0, "gif", "GIF"),
    (b"II*\x00", 0, "tiff", "TIFF"),
    (b"MM\x00*", 0, "tiff", "TIFF"),
)
_PIL_FORMAT = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
}
# BMP's "BM" is too short to trust alone: also require a known DIB header size.
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageError(ValueError):
    """The bytes are not an image we will decode; ``reason`` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str:
    """The real format from the magic bytes: 'jpeg', 'png', 'gif', 'webp', 'bmp' or 'tiff'."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    for magic, offset, name, _ in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if len(data) >= 18 and data[:2] == b"BM":
        if int.from_bytes(data[14:18], "little") in _BMP_DIB_SIZES:
            return "bmp"
    head = data[:16]
    kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary"
    raise ImageError(f"not an image: unknown format ({kind}, starts {head[:8]!r})")


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of a frame


def decode_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode untrusted image bytes to a ``size x size x 3`` uint8 RGB array (letterboxed).

    Raises ImageError for anything that is not a decodable image within ``max_pixels``.
    """
    return decode_frame(data, size, max_pixels)[0]


def decode_frame(
    data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, Box]:
    """``decode_image`` plus where the photo lies in the letterboxed square (its ``content`` box:
    fractions of the square; the rest is white padding). ``frame_to_photo`` maps a box found in
    the square back to the photo as its viewer sees it (EXIF orientation applied)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max_pixels > limit:
        raise ValueError(f"max_pixels={max_pixels} exceeds PIL's Image.MAX_IMAGE_PIXELS={limit}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Somebody flipped PIL's global switch; decoding now would pad truncated files silently.
        raise RuntimeError("PIL ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode")
    fmt = sniff_format(data)
    try:
        im = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])
    except Image.DecompressionBombError as e:
        raise ImageError(f"too many pixels (decompression bomb): {e}") from e
    except Exception as e:  # PIL raises many types for a bad header
        raise ImageError(f"corrupt {fmt} header: {type(e).__name__}: {e}") from e
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError(f"invalid {fmt} size {width}x{height}")
        if width * height > max_pixels:
            raise ImageError(f"too many pixels: {width}x{height} > {max_pixels}")
        if fmt == "jpeg":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller.
            im.draft(None, (size, size))
        try:
            im.load()  # the first frame only, for animated formats
            rgb = _to_rgb(im)
        except Image.DecompressionBombError as e:
            raise ImageError(f"too many pixels (decompression bomb): {e}") from e
        except OSError as e:  # PIL reports truncation and decoder errors as OSError
            raise ImageError(f"truncated or corrupt {fmt}: {e}") from e
        except Exception as e:  # untrusted input: any decoder failure is this image's fault
            raise ImageError(f"corrupt {fmt}: {type(e).__name__}: {e}") from e
    return np.asarray(_letterbox(rgb, size), dtype=np.uint8), content_box(*rgb.size, size)


def content_box(width: int, height: int, size: int) -> Box:
    """Where a ``width x height`` photo lies once letterboxed into ``size x size`` (``_letterbox``)."""
    scale = size / max(width, height)
    new_w = max(1, min(size, round(width * scale)))
    new_h = max(1, min(size, round(height * scale)))
    left, top = (size - new_w) // 2, (size - new_h) // 2
    return (left / size, top / size, (left + new_w) / size, (top + new_h) / size)


def photo_to_frame(box: Box, content: Box) -> Box:
    """A box in photo fractions -> the same box in fractions of the letterboxed square."""
    cx0, cy0, cx1, cy1 = content
    w, h = cx1 - cx0, cy1 - cy0
    return (cx0 + box[0] * w, cy0 + box[1] * h, cx0 + box[2] * w, cy0 + box[3] * h)


def frame_to_photo(box: Box, content: Box) -> Box:
    """A box in fractions of the letterboxed square -> photo fractions, clipped to the photo."""
    cx0, cy0, cx1, cy1 = content
    w, h = max(cx1 - cx0, 1e-9), max(cy1 - cy0, 1e-9)
    x0, y0 = (box[0] - cx0) / w, (box[1] - cy0) / h
    x1, y1 = (box[2] - cx0) / w, (box[3] - cy0) / h
    return (
        min(max(x0, 0.0), 1.0),
        min(max(y0, 0.0), 1.0),
        min(max(x1, 0.0), 1.0),
        min(max(y1, 0.0), 1.0),
    )


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG of an HxWx3 uint8 array (what the model's serving signature is fed)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8, got {rgb.dtype} {rgb.shape}")
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, with orientation and colour handled as the module docstring says."""
    icc = im.info.get("icc_profile")
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block is common; the pixels are still good
        pass
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im, dtype=np.int64)
        # 16-bit PNG/TIFF greyscale spans 0..65535: keep the tonal range by dropping the low byte.
        arr = np.clip(arr, 0, 65535) >> 8
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        arr = np.nan_to_num(np.clip(arr * scale, 0, 255))
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        mode = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(mode)
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, PAD_COLOR + (255,))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if icc and mode in ("RGB", "CMYK"):
        converted = _icc_to_srgb(im, icc)
        if converted is not None:
            return converted
    return im.convert("RGB")


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert through the embedded profile; None when the profile is unusable.

    A broken profile is common in the wild and the pixels are still good, so we fall back to
    PIL's plain conversion rather than dead-lettering the image.
    """
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    return out


def _letterbox(im: Image.Image, size: int) -> Image.Image:
    width, height = im.size
    scale = size / max(width, height)
    new_w = max(1, min(size, round(width * scale)))
    new_h = max(1, min(size, round(height * scale)))
    if (new_w, new_h) != (width, height):
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if (new_w, new_h) == (size, size):
        return im
    canvas = Image.new("RGB", (size, size), PAD_COLOR)
    canvas.paste(im, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas
