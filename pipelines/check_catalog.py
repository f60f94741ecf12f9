"""``vsearch check-catalog``: validate a day's snapshot and read every image safely.

    ReadCatalog -> every listing and review image -> ReadImages -> counts
                \\-> dead letters (rows and images) -> WORKDIR/deadletter/catalog/dt=D/

Nothing is written but dead letters and the run summary (``WORKDIR/runs/dt=D/catalog.json``):
this is the stage to run on a new or changed catalog before the expensive ones. Its summary
counts one unit per image of a valid row plus one per rejected row, so that
``read == ok + dead_lettered`` accounts for every input: ``ok`` images decoded,
``dead_lettered`` rejected rows plus unreadable images.

Idempotent for its date: the day's dead letters are cleared first and the summary replaced.

This module is the stage's face: its settings, its run and its result. It imports neither Beam
nor TensorFlow (the CLI builds ``vsearch check-catalog --help`` from the settings and must answer
at once); the Beam graph is ``pipelines/check_catalog_job.py``, imported when the stage runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core import images, paths, runs
from core.runs import Counts, RunSummary
from core.settings import ALLOWED_BUCKETS, CATALOG, DATE, WORKDIR, doc

if TYPE_CHECKING:
    import apache_beam as beam

STAGE = "catalog"


@dataclass(frozen=True)
class CheckCatalogSettings:
    catalog: str = field(metadata=CATALOG)
    date: dt.date = field(metadata=DATE)
    workdir: str = field(metadata=WORKDIR)
    # Small is enough to prove an image decodes; the model's size would only cost time.
    image_size: int = field(
        default=96, metadata=doc("side in pixels each image is decoded and letterboxed to")
    )
    allowed_buckets: tuple[str, ...] = field(default=(), metadata=ALLOWED_BUCKETS)
    max_pixels: int = field(
        default=images.DEFAULT_MAX_PIXELS,  # a 50 MP camera photo is fine, more is suspect
        metadata=doc("refuse images whose header claims more pixels than this"),
    )


def run(
    settings: CheckCatalogSettings,
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> Counts:
    """Run the stage for one date; writes its run summary and returns its counts."""
    from pipelines import check_catalog_job
    from pipelines.stage import run_pipeline

    job = run_pipeline(
        STAGE,
        settings.workdir,
        settings.date,
        lambda p: check_catalog_job.build(p, settings),
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
