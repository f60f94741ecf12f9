"""``vsearch serve --workdir W [--catalog C] [--host 127.0.0.1] [--port 8080]``: settings + CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import doc


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
    # Requests in the batcher (queued or in the running batch) at once. A 50 MP photo (the
    # decoder's pixel limit) takes up to ~1 GB while it decodes, whatever its upload size; the
    # batcher decodes a batch's photos one after another, so one such decode is in flight at a
    # time however many requests hold slots. 32 lets 16+ clients share one model call.
    max_decodes: int = field(
        default=32, metadata=doc("requests decoding and embedding photos at once")
    )
    decode_wait_s: float = field(  # a slot frees in milliseconds for a phone photo
        default=10.0, metadata=doc("seconds a request waits for a decoding slot before a 503")
    )
    # Batched serving (batcher.py): concurrent requests' photos share one model call.
    batch_window_ms: float = field(  # under load batches fill while the last one runs anyway
        default=1.0,
        metadata=doc("ms a lone photo waits for others to share its model call"),
    )
    batch_photos: int = field(  # one full /search/batch; more adds latency, little throughput
        default=32, metadata=doc("most photos per model call")
    )
    batch_queue: int = field(  # 8 full batches; past that a client should come back later
        default=256, metadata=doc("photos waiting for a model call before a 503 busy")
    )
    log_level: str = field(
        default="info",
        metadata=doc(
            "server log level (info: start-up, index swaps and refusals)",
            choices=("debug", "info", "warning", "error"),
        ),
    )
    access_log: bool = field(  # at 200 requests/s a line per request drowns the swaps
        default=False, metadata=doc("log one line per HTTP request")
    )

    def __post_init__(self) -> None:
        for flag, value in (
            ("--port", self.port),
            ("--max-k", self.max_k),
            ("--max-batch", self.max_batch),
            ("--max-decodes", self.max_decodes),
            ("--batch-photos", self.batch_photos),
            ("--batch-queue", self.batch_queue),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.batch_window_ms < 0:
            raise ValueError(f"--batch-window-ms must be >= 0, got {self.batch_window_ms}")
        if self.poll_s <= 0 or self.max_upload_bytes < 1 or self.decode_wait_s <= 0:
            raise ValueError("--poll-s, --max-upload and --decode-wait-s must be positive")


def run(settings: ServeSettings) -> None:
    """Serve until interrupted."""
    import importlib
    import logging

    import uvicorn

    from vsearch.serve.app import create_app

    # The model needs TensorFlow: import it now, before the server's threads start, because its
    # first import mutes stderr for a moment (vsearch.quiet) and would swallow their lines.
    importlib.import_module("tensorflow")

    # Our own records (index swaps at info, refusals at error) at the chosen level; the root
    # logger keeps libraries at warning.
    ours = logging.getLogger("vsearch")
    saved = ours.level
    ours.setLevel(settings.log_level.upper())
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=settings.access_log,
        )
    finally:
        ours.setLevel(saved)
