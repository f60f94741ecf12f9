"""The check-catalog stage's Beam graph (the stage's face, settings and run are
``pipelines/check_catalog.py``, which imports this module only when it runs the job).

    ReadCatalog -> every listing and review image -> ReadImages -> counts
                \\-> dead letters (rows and images) -> WORKDIR/deadletter/catalog/dt=D/
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from core import catalog as cat
from core.runs import METRICS_NAMESPACE
from pipelines.check_catalog import STAGE, CheckCatalogSettings
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters
from transforms.progress import LogProgress
from transforms.read_catalog import ReadCatalog
from transforms.read_images import MAIN_TAG, ReadImages


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
