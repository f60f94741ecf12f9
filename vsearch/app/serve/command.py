"""``vsearch serve --workdir W [--catalog C] [--host 127.0.0.1] [--port 8080]``: settings + CLI."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    workdir: str  # indexes/CURRENT and the models live here
    # Catalog root: listing attributes (colour, shape, material, title) for filters and results,
    # and held-out review photos for the no-match calibration. None: id maps only.
    catalog: str | None = None
    host: str = "127.0.0.1"  # loopback: exposing the service is a deployment decision
    port: int = 8080
    poll_s: float = 5.0  # how often indexes/CURRENT is read: a publish is served within this
    max_upload_bytes: int = 10 << 20  # phone photos are 2-6 MB; more is not a photo upload
    default_k: int = 20  # a results page
    max_k: int = 100  # beyond this an app is paging through noise
    max_batch: int = 32  # photos per /search/batch: one model batch
    overfetch: int = 5  # image hits per wanted listing before filtering (<= 10 photos each)
    max_fetch: int = 4096  # over-fetch cap; more selective filters search the subset exactly
    calibration_photos: int = 200  # review photos per index for the no-match threshold
    no_match_threshold: float | None = None  # operator override of the calibrated threshold
    health_days: int = 14  # days of stage runs on /health
    cache_dir: str | None = None  # local copy of gs:// shards (default: $TMPDIR)
    log_level: str = "info"


def parse_args(argv: Sequence[str]) -> ServeSettings:
    d = ServeSettings(workdir="")
    p = argparse.ArgumentParser(
        prog="vsearch serve",
        description="HTTP search by photo over the published index, following each publish.",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--catalog", help="catalog root: attributes for filters, calibration photos")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--poll-s", type=float, default=d.poll_s, help="seconds between CURRENT checks")
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes)
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--calibration-photos", type=int, default=d.calibration_photos)
    p.add_argument("--no-match-threshold", type=float, help="fixed threshold (skips calibration)")
    p.add_argument("--cache-dir", help="local copy of gs:// shards (default: $TMPDIR)")
    p.add_argument("--log-level", default=d.log_level)
    a = p.parse_args(list(argv))
    for flag, value in (("--port", a.port), ("--max-k", a.max_k), ("--max-batch", a.max_batch)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if a.poll_s <= 0 or a.max_upload_bytes < 1:
        raise ValueError("--poll-s and --max-upload-bytes must be positive")
    return dataclasses.replace(
        d,
        workdir=a.workdir,
        catalog=a.catalog,
        host=a.host,
        port=a.port,
        poll_s=a.poll_s,
        max_upload_bytes=a.max_upload_bytes,
        max_k=a.max_k,
        max_batch=a.max_batch,
        calibration_photos=a.calibration_photos,
        no_match_threshold=a.no_match_threshold,
        cache_dir=a.cache_dir,
        log_level=a.log_level,
    )


def run(settings: ServeSettings) -> None:
    """Serve until interrupted."""
    import logging

    import uvicorn

    from vsearch.app.serve.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


def main(argv: Sequence[str]) -> int:
    run(parse_args(argv))
    return 0
