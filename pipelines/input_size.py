"""The model's input size, chosen from the catalog's own photos (``vsearch preprocess``'s default).

Why: the input size that wins depends on the photos (issue 29, BENCHMARKS.md "Input size").
Where the buyer photos are small square shots with the item filling them (the demo, studio and
bazaar styles: 128 px), 96 px is best: 160 px only upsamples them, costs 2.8x the compute and
lost on the bazaar style (whole-photo hit@10 0.921 vs 0.952). Where they are large phone frames
with the item at 20-60 % of the side (the phone style: 256 px), 160 px is what lifts the
held-out buyer photos' oracle-crop hit@10 from 0.37-0.41 at 96 px to 0.77 (50 epochs). So: 160 px
when the buyer photos have the pixels for it (median longer side >= 1.25 x 160 = 200 px, so the
letterbox only ever shrinks them), else 96 px. Real marketplace photos (phone frames of 1000+ px)
get 160 px. Training then runs longer (``models.config.default_epochs``: 50 epochs from 160 px).

The measure is a small sample read in this process (the first ``SAMPLE`` review photos of the
day's snapshot, or the listing photos when it has no reviews): the first ``HEAD_BYTES`` of each,
where an image's size is written, never the catalog. A photo that cannot be read or decoded is
left out of the sample; the preprocess job dead-letters it as it always did.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from core import storage
from core.catalog import CatalogError, Listing, Review, listing_images, review_image
from core.snapshot import check_row, find_table, iter_rows
from models.config import LARGE_INPUT

# The two sizes that won on some catalog style (BENCHMARKS.md); from LARGE on, training runs
# longer (models.config.default_epochs), so the two share one constant.
SMALL, LARGE = 96, LARGE_INPUT
MIN_LONGER_SIDE_FOR_LARGE = 200  # 1.25 x LARGE: the letterbox shrinks, never enlarges
SAMPLE = 200  # photos measured: the median of 200 is stable to a few pixels
HEAD_BYTES = 256 << 10  # a JPEG's size sits after its EXIF block (at most 64 KiB) and tables


@dataclass(frozen=True)
class InputSize:
    size: int
    photos: int  # photos measured
    median_longer_side: int | None  # None: no photo could be measured
    kind: str  # "review" or "listing": which photos were measured

    def reason(self) -> str:
        if self.median_longer_side is None:
            return f"{self.size} px: no photo of the snapshot could be measured"
        return (
            f"{self.size} px: the median longer side of {self.photos} {self.kind} photos is "
            f"{self.median_longer_side} px ({LARGE} px from {MIN_LONGER_SIDE_FOR_LARGE} px on)"
        )


def choose(longer_sides: list[int], kind: str) -> InputSize:
    """The input size for photos with these longer sides (pixels)."""
    if not longer_sides:
        return InputSize(SMALL, 0, None, kind)
    median = int(statistics.median(longer_sides))
    size = LARGE if median >= MIN_LONGER_SIDE_FOR_LARGE else SMALL
    return InputSize(size, len(longer_sides), median, kind)


def measure(catalog: str, date: str, allowed_buckets: Iterable[str] = ()) -> InputSize:
    """The input size for a day's snapshot, from a sample of its buyer photos (listing photos
    when it has no reviews). Raises CatalogError for a snapshot without a listings table."""
    allowed = tuple(allowed_buckets)
    for kind in ("review", "listing"):
        uris = _sample_uris(catalog, date, kind, allowed)
        if uris:
            sides = storage.map_io(_longer_side, uris, remote=storage.is_gcs(uris[0]))
            return choose([s for s in sides if s is not None], kind)
    return choose([], "listing")


def _sample_uris(catalog: str, date: str, kind: str, allowed: tuple[str, ...]) -> list[str]:
    table = find_table(catalog, date, "reviews" if kind == "review" else "listings")
    if table is None:
        if kind == "listing":
            raise CatalogError(f"no listings table under {storage.join(catalog, f'dt={date}')}")
        return []
    uris: list[str] = []
    for row in iter_rows(table, "preprocess"):
        if not isinstance(row, dict):
            continue
        parsed = check_row(row, table, catalog, allowed, "preprocess")
        if isinstance(parsed, Review):
            uris.append(review_image(parsed).uri)
        elif isinstance(parsed, Listing):
            uris.extend(ref.uri for ref in listing_images(parsed)[:1])
        if len(uris) >= SAMPLE:
            break
    return uris


def _longer_side(uri: str) -> int | None:
    from PIL import Image  # only when measuring

    try:
        with Image.open(io.BytesIO(storage.read_head(uri, HEAD_BYTES))) as im:
            return max(im.size)  # EXIF rotation swaps the sides, not the longer one
    except (storage.StorageError, OSError, ValueError, Image.DecompressionBombError):
        return None
