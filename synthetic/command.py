"""``vsearch generate-catalog``: its settings, and which style draws the catalog.

The CLI maps the command's flags onto ``GenerateSettings`` and calls ``run``; each style's
generator is a plain function of its own module (``generate`` for studio, ``bazaar``, ``phone``).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from core import storage
from core.settings import doc
from synthetic.bazaar import generate_bazaar_catalog
from synthetic.generate import MAX_WORKERS, GeneratedCatalog, generate_catalog
from synthetic.phone import DEFAULT_IMAGE_SIZE, generate_phone_catalog

STYLES = ("studio", "bazaar", "phone")  # `vsearch generate-catalog --style`


@dataclass(frozen=True)
class GenerateSettings:
    out: str = field(
        metadata=doc(
            "output root: a local path or gs://bucket/prefix", positional=True, metavar="OUT"
        )
    )
    listings: int = field(metadata=doc("number of listings on the first day"))
    seed: int = field(metadata=doc("random seed; the output is a pure function of it"))
    # Each later day adds ~5%, re-shoots ~3% and removes ~2% of the listings.
    days: int = field(default=1, metadata=doc("number of daily snapshots"))
    start_date: dt.date = field(
        default=dt.date(2026, 1, 1), metadata=doc("date of the first snapshot, YYYY-MM-DD")
    )
    # studio: buyer photos where the item fills most of the frame (the demo's catalog);
    # bazaar: another taxonomy, flat vector art, heavy degradations (synthetic/bazaar.py);
    # phone: the item small and off-centre in cluttered 4:3 phone photos, true boxes recorded
    # under OUT/truth/ (synthetic/phone.py).
    style: str = field(default="studio", metadata=doc("how the photos are drawn", choices=STYLES))
    image_size: int | None = field(
        default=None,
        metadata=doc(
            "longer side of every JPEG in pixels (default: 128; 256 for --style phone, whose "
            "items are small in the frame)"
        ),
    )
    # Truncated JPEG, zero bytes, HTML named .jpg: exercises the dead-letter paths.
    corrupt_fraction: float = field(
        default=0.0,
        metadata=doc("fraction of listing images written deliberately broken (--style studio)"),
    )
    workers: int = field(default=MAX_WORKERS, metadata=doc("rendering processes"))

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"--style must be one of {STYLES}, got {self.style!r}")
        if self.corrupt_fraction and self.style != "studio":
            raise ValueError(
                f"--corrupt-fraction is only drawn by --style studio, not {self.style}"
            )


def run(settings: GenerateSettings) -> GeneratedCatalog | list[int]:
    """``vsearch generate-catalog``: write the catalog and print one line about it."""
    if settings.style != "studio":
        return _run_other_style(settings)
    result = generate_catalog(
        settings.out,
        settings.listings,
        settings.days,
        settings.seed,
        image_size=settings.image_size or 128,
        start_date=settings.start_date,
        corrupt_fraction=settings.corrupt_fraction,
        workers=settings.workers,
    )
    last = result.days[-1]
    total_written = sum(d.images_written for d in result.days)
    print(
        f"generate-catalog: {len(result.days)} day(s) {result.dates[0]}..{result.dates[-1]} -> {result.out}: "
        f"last day {last.listings} listings, {last.images} images, {last.reviews} reviews "
        f"(+{last.added} ~{last.changed} -{last.removed}); {total_written} image files written "
        f"in {result.wall_s:.1f} s ({total_written / max(result.wall_s, 1e-9):.0f} images/s)"
    )
    return result


def _run_other_style(settings: GenerateSettings) -> list[int]:
    started = time.perf_counter()
    if settings.style == "phone":
        counts = generate_phone_catalog(
            settings.out,
            settings.listings,
            settings.days,
            settings.seed,
            image_size=settings.image_size or DEFAULT_IMAGE_SIZE,
            start_date=settings.start_date,
            workers=settings.workers,
        )
    else:
        counts = generate_bazaar_catalog(
            settings.out,
            settings.listings,
            settings.days,
            settings.seed,
            image_size=settings.image_size or 128,
            start_date=settings.start_date,
        )
    print(
        f"generate-catalog --style {settings.style}: {len(counts)} day(s) -> "
        f"{storage.normalize(settings.out)}: listings per day {counts}, "
        f"{time.perf_counter() - started:.1f} s"
    )
    return counts
