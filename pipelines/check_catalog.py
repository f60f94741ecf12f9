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

from collections.abc import Iterator

import apache_beam as beam

from core import catalog as cat
from core import paths, runs
from core.runs import METRICS_NAMESPACE, Counts, RunSummary
from pipelines.settings import CheckCatalogSettings
from pipelines.stage import run_pipeline
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters
from transforms.progress import LogProgress
from transforms.read_catalog import ReadCatalog
from transforms.read_images import MAIN_TAG, ReadImages

STAGE = "catalog"


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
) -> Counts:
    """Run the stage for one date; writes its run summary and returns its counts."""
    job = run_pipeline(
        STAGE,
        settings.workdir,
        settings.date,
        lambda p: build(p, settings),
        pipeline_args,
        test_pipeline,
    )
    c = job.counters
    rejected, image_refs = c.get("rows_rejected", 0), c.get("image_refs", 0)
    summary = RunSummary(
        stage=STAGE,
        date=settings.date.isoformat(),
        read=image_refs + rejected,
        ok=c.get("images_decoded", 0),
        dead_lettered=c.get("dead_lettered", 0),
        wall_s=job.wall_s,
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
    runs.complete(settings.workdir, summary)
    return Counts.of(summary)
