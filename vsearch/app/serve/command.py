"""``vsearch serve --workdir W [--catalog C] [--host 127.0.0.1] [--port 8080]``: settings + CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from vsearch.core.settings import doc


@dataclass(frozen=True)
class ServeSettings:
    workdir: str = field(
        metadata=doc("working directory: indexes/CURRENT and the models live here")
    )
    # Catalog root: listing attributes (colour, shape, material, title) for filters and results,
    # and held-out review photos for the no-match calibration. None: id maps only.
    catalog: str | None = field(
        default=None, metadata=doc("catalog root: attributes for filters, calibration photos")
    )
    host: str = field(  # loopback: exposing the service is a deployment decision
        default="127.0.0.1", metadata=doc("address to listen on")
    )
    port: int = field(default=8080, metadata=doc("port to listen on"))
    poll_s: float = field(  # a publish is served within this
        default=5.0, metadata=doc("seconds between checks of indexes/CURRENT")
    )
    max_upload_bytes: int = field(  # phone photos are 2-6 MB; more is not a photo upload
        default=10 << 20, metadata=doc("largest accepted upload (e.g. 10M)")
    )
    default_k: int = field(default=20, metadata=doc("listings per search when k is not given"))
    max_k: int = field(  # beyond this an app is paging through noise
        default=100, metadata=doc("largest k a request may ask for")
    )
    max_batch: int = field(default=32, metadata=doc("photos per /search/batch (one model batch)"))
    overfetch: int = field(  # <= 10 photos per listing
        default=5, metadata=doc("image hits fetched per wanted listing before filtering")
    )
    max_fetch: int = field(  # more selective filters search the subset exactly
        default=4096, metadata=doc("over-fetch cap before falling back to exact filtered search")
    )
    calibration_photos: int = field(
        default=200, metadata=doc("held-out review photos per index for the no-match threshold")
    )
    no_match_threshold: float | None = field(
        default=None, metadata=doc("fixed no-match score threshold (skips calibration)")
    )
    health_days: int = field(default=14, metadata=doc("days of stage runs on /health"))
    cache_dir: str | None = field(
        default=None, metadata=doc("local copy of gs:// shards (default: $TMPDIR)")
    )
    log_level: str = field(
        default="info",
        metadata=doc("server log level", choices=("debug", "info", "warning", "error")),
    )

    def __post_init__(self) -> None:
        for flag, value in (
            ("--port", self.port),
            ("--max-k", self.max_k),
            ("--max-batch", self.max_batch),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.poll_s <= 0 or self.max_upload_bytes < 1:
            raise ValueError("--poll-s and --max-upload must be positive")


def run(settings: ServeSettings) -> None:
    """Serve until interrupted."""
    import logging

    import uvicorn

    from vsearch.app.serve.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )
