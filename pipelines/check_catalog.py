"""``vsearch check-catalog``: validate a day's snapshot and read every image safely.

    ReadCatalog -> every listing and review image -> ReadImages -> counts
                \\-> dead letters (rows and images) -> WORKDIR/deadletter/catalog/dt=D/

Nothing is written but dead letters and the run summary (``WORKDIR/runs/dt=D/catalog.json``):
this is the stage to run on a new or changed catalog before the expensive ones. Its summary
counts one unit per image of a valid row plus one per rejected row, so that
``read == ok + dead_lettered`` accounts for every input: ``ok`` images decoded,
``dead_lettered`` rejected rows plus unreadable images.

Idempotent for its date: the day's dead letters are cleared first and the summary replaced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.deadletter import DEAD_LETTER_TAG, WriteDeadLetters
from transforms.progress import LogProgress
from transforms.read_catalog import ReadCatalog
from transforms.read_images import MAIN_TAG, ReadImages
from vsearch.core import catalog as cat
from vsearch.core import images, paths, runs
from vsearch.core.deadletter import clear_dead_letters
from vsearch.core.runs import METRICS_NAMESPACE, RunSummary

STAGE = "catalog"


@dataclass(frozen=True)
class CheckCatalogSettings:
    catalog: str  # root URI holding dt=YYYY-MM-DD/ snapshots
    date: dt.date
    workdir: str  # where dead letters and the run summary go
    image_size: int = 96  # decode target; small is enough to prove an image decodes
    allowed_buckets: tuple[str, ...] = ()  # gs:// buckets image URIs may point into
    max_pixels: int = images.DEFAULT_MAX_PIXELS  # refuse bigger images from the header alone


class _ImageRefsFn(beam.DoFn):
    """A Listing -> one ImageRef per photo, or a Review -> its photo; counted as image_refs."""

    def setup(self) -> None:
        self._refs = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "image_refs")

    def process(self, row: cat.Listing | cat.Review) -> Iterator[cat.ImageRef]:
        refs = cat.listing_images(row) if isinstance(row, cat.Listing) else [cat.review_image(row)]
        self._refs.inc(len(refs))
        yield from refs


def build(p: beam.Pipeline, settings: CheckCatalogSettings) -> None:
    """The stage's pipeline graph on ``p`` (separate from running it, for tests and reuse)."""
    snapshot = p | "ReadCatalog" >> ReadCatalog(
        settings.catalog, settings.date, settings.allowed_buckets, stage=STAGE
    )
    refs = (snapshot["listings"], snapshot["reviews"]) | "Rows" >> beam.Flatten()
    decoded = (
        refs
        | "ImageRefs" >> beam.ParDo(_ImageRefsFn())
        | "ReadImages" >> ReadImages(STAGE, settings.image_size, settings.max_pixels)
    )
    _ = decoded[MAIN_TAG] | "Progress" >> LogProgress(STAGE, "images read")
    _ = (
        (snapshot[DEAD_LETTER_TAG], decoded[DEAD_LETTER_TAG])
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(settings.workdir, STAGE, settings.date)
    )


def run(
    settings: CheckCatalogSettings,
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> RunSummary:
    """Run the stage for one date; returns (and writes) its run summary."""
    clear_dead_letters(settings.workdir, STAGE, settings.date)
    with runs.stopwatch() as t:
        p = test_pipeline or beam.Pipeline(options=PipelineOptions(pipeline_args or []))
        build(p, settings)
        result = p.run()
        result.wait_until_finish()
    c = runs.counters(result)
    rejected, image_refs = c.get("rows_rejected", 0), c.get("image_refs", 0)
    summary = RunSummary(
        stage=STAGE,
        date=settings.date.isoformat(),
        read=image_refs + rejected,
        ok=c.get("images_decoded", 0),
        dead_lettered=c.get("dead_lettered", 0),
        wall_s=t["s"],
        extra={
            "listings_ok": c.get("listings_ok", 0),
            "reviews_ok": c.get("reviews_ok", 0),
            "rows_rejected": rejected,
            "image_refs": image_refs,
            "images_read": c.get("images_read", 0),
            "image_size": settings.image_size,
            "deadletter_dir": paths.deadletter_dir(settings.workdir, STAGE, settings.date),
        },
    )
    runs.write_summary(settings.workdir, summary)
    return summary


def parse_args(argv: Sequence[str]) -> tuple[CheckCatalogSettings, list[str]]:
    p = argparse.ArgumentParser(
        prog="vsearch check-catalog",
        description=(
            "Validate a day's catalog snapshot (listings and reviews) and read every image "
            "safely. Bad rows and unreadable images become dead letters under "
            "WORKDIR/deadletter/catalog/dt=DATE/; counts go to WORKDIR/runs/dt=DATE/catalog.json. "
            "Any flag not listed here is passed to Beam as a pipeline option "
            "(e.g. --runner DataflowRunner --project P --region R)."
        ),
    )
    p.add_argument(
        "--catalog",
        required=True,
        help="catalog root URI holding dt=YYYY-MM-DD/ snapshots (local path or gs://)",
    )
    p.add_argument("--date", required=True, type=_date, help="snapshot date, YYYY-MM-DD")
    p.add_argument(
        "--workdir", required=True, help="work directory URI for dead letters and the run summary"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=96,
        help="side in pixels each image is decoded and letterboxed to (default 96)",
    )
    p.add_argument(
        "--allowed-bucket",
        action="append",
        default=[],
        metavar="BUCKET",
        help="a gs:// bucket that image URIs may point into besides the catalog root (repeatable)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=images.DEFAULT_MAX_PIXELS,
        help=f"refuse images whose header claims more pixels (default {images.DEFAULT_MAX_PIXELS})",
    )
    args, pipeline_args = p.parse_known_args(list(argv))
    settings = CheckCatalogSettings(
        catalog=args.catalog,
        date=args.date,
        workdir=args.workdir,
        image_size=args.image_size,
        allowed_buckets=tuple(args.allowed_bucket),
        max_pixels=args.max_pixels,
    )
    return settings, pipeline_args


def _date(value: str) -> dt.date:
    try:
        return paths.parse_date(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    settings, pipeline_args = parse_args(sys.argv[1:] if argv is None else argv)
    run(settings, pipeline_args)
    return 0


if __name__ == "__main__":  # the Airflow Beam operator runs `python -m MODULE --flag=value ...`
    import sys as _sys

    _sys.exit(main(_sys.argv[1:]))
