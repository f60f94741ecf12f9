"""``vsearch publish``: the publish stage. Flips ``indexes/CURRENT`` to a verified build and
records the run; how a build is verified, flipped and retired is ``index.publish``.

Its result is what ``index.publish.publish`` returns (``PublishResult``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from core import paths, pointers, runs
from core.settings import WORKDIR, doc
from index.publish import DEFAULT_RETENTION, PublishResult, latest_manifest, publish

__all__ = ["PublishResult", "PublishSettings", "run"]


@dataclass(frozen=True)
class PublishSettings:
    workdir: str = field(metadata=WORKDIR)
    manifest: str | None = field(
        default=None, metadata=doc("manifest URI (default: newest build of the model version)")
    )
    model_version: str | None = field(
        default=None,
        metadata=doc("model VERSION whose newest build to publish (default: models/PUBLISHED)"),
    )
    retention: int = field(
        default=DEFAULT_RETENTION, metadata=doc("validated builds kept, the published one included")
    )
    min_recall: float = field(default=0.0, metadata=doc("refuse a manifest below this recall@10"))
    # The day this publish completes: its run summary and completion marker go under it (the
    # DAG and backfill pass it; by hand without it, nothing is recorded).
    date: dt.date | None = field(
        default=None, metadata=doc("day to record this publish under (runs/dt=DATE/publish.*)")
    )


def run(settings: PublishSettings) -> PublishResult:
    """``vsearch publish``: the given manifest, or the newest build of the (published) model."""

    uri = settings.manifest
    if uri is None:
        version = (
            settings.model_version
            or pointers.read_pointer(paths.published_model_pointer(settings.workdir)).value
        )
        if not version:
            raise FileNotFoundError(
                f"no --manifest, --model-version or published model "
                f"({paths.published_model_pointer(settings.workdir)})"
            )
        uri = latest_manifest(settings.workdir, version)
    with runs.stopwatch() as t:
        result = publish(settings.workdir, uri, settings.retention, min_recall=settings.min_recall)
    print(
        f"published {result.manifest_uri} (was {result.previous}); "
        f"removed {len(result.removed_builds)} old build(s)"
    )
    if settings.date is not None:
        summary = runs.RunSummary(
            "publish", settings.date.isoformat(), 1, 1, 0, wall_s=t["s"], extra=asdict(result)
        )
        runs.complete(settings.workdir, summary)
    return result
