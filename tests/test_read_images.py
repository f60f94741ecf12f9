"""The Beam image reader: good files come out as RGB with their sha256, every bad one as a dead
letter with its reason, on local paths and on gs:// (loopback GCS server)."""

from __future__ import annotations

import hashlib
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from core import storage
from core.catalog import ImageRef
from tests import image_fixtures as fx
from transforms.read_images import DecodedImage, ReadImages

SIZE = 24


def _refs(files: dict[str, bytes | None], root: str) -> list[ImageRef]:
    """Write the files (None = do not create) and return one ref per name, listing id = name."""
    refs = []
    for i, (name, data) in enumerate(sorted(files.items())):
        uri = storage.join(root, name)
        if data is not None:
            storage.write_bytes(uri, data)
        refs.append(ImageRef(name, i, uri, "listing"))
    return refs


def _check_images(files: dict[str, bytes | None], expected_ids: list[str], red: bool):
    """A matcher: decoded images are exactly ``expected_ids``, sized, with true sha256."""

    def check(decoded: list[DecodedImage]) -> None:
        by_id = {d.ref.listing_id: d for d in decoded}
        assert sorted(by_id) == expected_ids, sorted(by_id)
        for name, d in by_id.items():
            assert d.rgb.shape == (SIZE, SIZE, 3) and d.rgb.dtype == np.uint8
            assert d.sha256 == hashlib.sha256(files[name] or b"").hexdigest()
            if red:  # PNG named .jpg, CMYK and animated GIF fixtures are all red
                assert np.abs(d.rgb[SIZE // 2, SIZE // 2].astype(int) - fx.RED).max() < 15, name

    return check


def _check_dead(expected: dict[str, str], root: str):
    """A matcher: dead letters by listing id, each error containing the expected phrase."""

    def check(dead: list) -> None:
        reasons = {d.listing_id: d.error for d in dead}
        assert sorted(reasons) == sorted(expected), reasons
        for name, phrase in expected.items():
            assert phrase in reasons[name], (name, reasons[name])
        assert all(d.stage == "test" and d.uri == storage.join(root, d.listing_id) for d in dead)

    return check


def _run(
    files: dict[str, bytes | None], root: str, ok: list[str], dead: dict[str, str], red: bool
) -> None:
    refs = _refs(files, root)
    with beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"])) as p:
        out = p | beam.Create(refs) | ReadImages("test", SIZE)
        assert_that(out["images"], _check_images(files, ok, red), label="Images")
        assert_that(out["dead_letter"], _check_dead(dead, root), label="Dead")


def test_each_bad_file_has_its_outcome(tmp_path) -> None:
    files = {
        "png-named.jpg": fx.solid(fx.RED),
        "cmyk.jpg": fx.cmyk_jpeg(),
        "animated.gif": fx.animated_gif(),
        "truncated.jpg": fx.truncated_jpeg(),
        "zero.jpg": b"",
        "text.jpg": fx.text_named_jpg(),
        "bomb.png": fx.png_bomb(30000, 30000),
        "missing.jpg": None,
    }
    expected_dead = {
        "truncated.jpg": "truncated or corrupt jpeg",
        "zero.jpg": "empty file",
        "text.jpg": "not an image",
        "bomb.png": "too many pixels",
        "missing.jpg": "cannot read",
    }
    ok = ["animated.gif", "cmyk.jpg", "png-named.jpg"]
    _run(files, str(tmp_path), ok, expected_dead, red=True)
    assert not os.path.exists(tmp_path / "missing.jpg")


def test_gcs_missing_object_is_dead_lettered(gcs_bucket: str) -> None:
    files = {"good.jpg": fx.noisy_jpeg(), "gone.jpg": None}
    _run(files, gcs_bucket + "/img", ["good.jpg"], {"gone.jpg": "cannot read"}, red=False)


def test_oversized_file_is_dead_lettered(tmp_path) -> None:
    refs = _refs({"big.jpg": fx.noisy_jpeg(size=128)}, str(tmp_path))
    with beam.Pipeline() as p:
        out = p | beam.Create(refs) | ReadImages("test", SIZE, max_bytes=1000)
        assert_that(out["images"], equal_to([]), label="NoImages")
        assert_that(
            out["dead_letter"] | beam.Map(lambda d: d.error),
            equal_to(["listing image: file larger than 1000 bytes"]),
            label="Dead",
        )


def test_read_limited_reads_files_longer_than_one_piece_whole_up_to_the_limit(
    tmp_path, monkeypatch
) -> None:
    """Reads come in pieces (storage.READ_PIECE); a file of several pieces arrives whole and byte
    for byte, one of exactly the limit is read, one byte more is refused."""
    from transforms import read_images

    monkeypatch.setattr(storage, "READ_PIECE", 1000)
    data = os.urandom(3500)
    path = str(tmp_path / "photo.bin")
    storage.write_bytes(path, data)
    assert read_images.read_limited(path, 3500) == data
    assert read_images.read_limited(path, 10_000) == data
    with pytest.raises(ValueError, match="larger than 3499 bytes"):
        read_images.read_limited(path, 3499)


def test_decoding_ahead_in_threads_gives_what_decoding_in_line_gives(tmp_path) -> None:
    """Embed decodes in a background thread while the model runs: the same pixels as the safe
    decoder in line, the same dead letters, nothing lost at the bundle's end (more photos than
    the look-ahead), and outputs a grouping step downstream accepts."""
    from core import images
    from transforms.read_images import DecodeImages, ReadImageBytes, _DecodeFn

    files: dict[str, bytes | None] = {
        f"p{i:03d}.jpg": fx.noisy_jpeg(seed=i) for i in range(_DecodeFn.LOOKAHEAD + 72)
    }
    want = {n: images.decode_image(d, SIZE).tobytes() for n, d in files.items() if d}
    files["truncated.jpg"] = fx.truncated_jpeg()
    files["text.jpg"] = fx.text_named_jpg()
    refs = _refs(files, str(tmp_path))

    def same_pixels(got: list[dict[str, bytes]]) -> None:
        assert len(got) == 1 and got[0].keys() == want.keys()
        assert all(got[0][n] == want[n] for n in want)

    with beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"])) as p:
        raw = p | beam.Create(refs) | ReadImageBytes("test")
        out = raw["images"] | DecodeImages("test", SIZE, threads=2)
        pixels = (
            out["images"]
            | beam.Map(lambda d: ("all", (d.ref.listing_id, d.rgb.tobytes())))
            | beam.GroupByKey()
            | beam.MapTuple(lambda _, xs: dict(xs))
        )
        assert_that(pixels, same_pixels, label="Pixels")
        assert_that(
            out["dead_letter"] | beam.Map(lambda d: d.listing_id),
            equal_to(["text.jpg", "truncated.jpg"]),
            label="Dead",
        )
