"""The index in service and its hot swap.

A :class:`ServedIndex` is everything one published index needs to answer: the verified shards
and the model its manifest names (PhotoSearch), the listings' attributes, the filtered search and
the calibrated no-match threshold. Loading one verifies every shard's sha256 against the manifest
(the Searcher does that before faiss reads a byte) and fails with a clear error otherwise.

:class:`IndexHolder` keeps the current one behind a single reference. A background thread polls
``indexes/CURRENT``; when it names another manifest, the new index is loaded completely (off the
request path), then the reference is swapped under a lock. Requests take the reference once
(``with holder.use() as served``) and finish on that index even if a swap happens meanwhile; the
old index is closed when its last request is done. A new index that fails to load (corrupt or
truncated shard, bad manifest, missing model) is refused and logged, the old one keeps serving,
and the same manifest is not retried until CURRENT changes again (or the same manifest is
published again: publish rewrites its ``verified.json``).

A service that starts on a CURRENT it cannot load falls back to the newest build that publish
verified (``verified.json``, index/publish.py) and that loads: a restart never turns one bad
publish into an outage. ``fallback`` then says which manifest CURRENT names, why it was refused
and what is served instead (/readyz and /health show it); it clears when CURRENT loads.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from core import paths, pointers
from index import publish
from index import searcher as searcher_mod
from index.searcher import Searcher
from search.photo_search import PhotoSearch
from vsearch.serve import attributes, calibration
from vsearch.serve.attributes import Attributes
from vsearch.serve.calibration import Calibration
from vsearch.serve.filtered import FilteredSearch

log = logging.getLogger(__name__)


def settle_garbage() -> None:
    """Collect once, then move every object alive out of the cyclic collector's sight.

    A loaded model and index are hundreds of thousands of Python objects (TensorFlow's restored
    functions above all) that live as long as they serve. Left in view, every automatic full
    collection walks them all: a ~250 ms pause, holding the GIL, that stalled whole batches of
    requests every few seconds (16 clients: p99 395 ms with the pauses, 176 ms without;
    BENCHMARKS.md, "Batched serving"). Called after each swap: the unfreeze first lets the
    retired index's cycles be collected then (or at the next swap, if requests still held it)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class NotReady(RuntimeError):
    """No index is loaded yet (none published, or the first one failed to load)."""


@dataclass
class ServedIndex:
    manifest_uri: str
    photos: PhotoSearch
    search: FilteredSearch
    attributes: Attributes
    calibration: Calibration
    loaded_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    users: int = 0  # requests using it now (guarded by the holder's lock)
    retired: bool = False  # replaced: close when the last user is done

    @property
    def build_id(self) -> str:
        return str(self.photos.manifest.build_id)

    @property
    def model_version(self) -> str:
        return str(self.photos.manifest.model_version)

    def close(self) -> None:
        self.photos.close()


@dataclass(frozen=True)
class LoadOptions:
    workdir: str
    catalog: str | None
    cache_dir: str | None = None
    calibration_photos: int = 200
    no_match_threshold: float | None = None
    overfetch: int = 5
    max_fetch: int = 4096


def load_index(
    manifest_uri: str, opts: LoadOptions, previous: ServedIndex | None = None
) -> ServedIndex:
    """Load and verify one published index with its model, attributes and calibration.

    The daily publish usually keeps the model: when ``previous`` (the index in service) has the
    same model version, its loaded model is shared instead of loaded again (a SavedModel load is
    most of a swap's time). A model is immutable once published, so sharing it is safe.
    """
    searcher = Searcher.from_manifest_uri(
        manifest_uri, workdir=opts.workdir, cache_dir=opts.cache_dir
    )
    reuse = None
    if previous is not None and previous.model_version == searcher.manifest.model_version:
        reuse = previous.photos.embedder
    try:
        photos = PhotoSearch(searcher, opts.workdir, embedder=reuse)
        attrs, reviews = attributes.load(
            opts.workdir, opts.catalog, searcher.manifest, searcher_mod.id_maps(searcher)
        )
        search = FilteredSearch(searcher, attrs, opts.overfetch, opts.max_fetch)
        calib = calibration.calibrate(
            photos, reviews, opts.calibration_photos, fixed=opts.no_match_threshold
        )
    except BaseException:
        searcher.close()
        raise
    return ServedIndex(manifest_uri, photos, search, attrs, calib)


Loader = Callable[[str, ServedIndex | None], ServedIndex]  # (manifest URI, index in service)
Listener = Callable[[str, ServedIndex | None, str], None]  # (event, index, detail)


class IndexHolder:
    def __init__(self, workdir: str, loader: Loader, poll_s: float, listener: Listener) -> None:
        self._workdir = workdir
        self._pointer = paths.current_index_pointer(workdir)
        self._load = loader
        self._poll_s = poll_s
        self._notify = listener  # metrics and logs hear about swaps and refusals
        self._lock = threading.Lock()
        self._current: ServedIndex | None = None
        self._refused: str | None = None  # the manifest that failed; retried only after a change
        self._refused_record: str | None = None  # its verified.json then (a re-publish changes it)
        self.last_error: str | None = None
        # Set while the index served is not the one CURRENT names (it failed to load): says so.
        self.fallback: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> ServedIndex | None:
        return self._current

    @contextmanager
    def use(self) -> Iterator[ServedIndex]:
        """The index for one request; it stays open until the request is done."""
        with self._lock:
            served = self._current
            if served is None:
                raise NotReady(self.last_error or "no index loaded yet")
            served.users += 1
        try:
            yield served
        finally:
            with self._lock:
                served.users -= 1
                done = served.retired and served.users == 0
            if done:
                served.close()

    def check_once(self) -> str:
        """Read CURRENT; load and swap if it changed. Returns what happened, in one word."""
        uri = pointers.read_pointer(self._pointer).value
        if not uri:
            self.last_error = f"no published index: {self._pointer} does not exist"
            return "none"
        current = self._current
        if current is not None and current.manifest_uri == uri:
            return "unchanged"
        record = publish.verified_record(uri)
        if uri == self._refused and record == self._refused_record:
            return "unchanged"  # the same refused build, not published again since
        try:
            fresh = self._load(uri, current)
        except Exception as e:  # any load failure: keep serving the old index
            self._refused, self._refused_record = uri, record
            self.last_error = f"refused index {uri}: {type(e).__name__}: {e}"
            log.error("%s (still serving %s)", self.last_error, current and current.manifest_uri)
            self._notify("refused", current, self.last_error)
            if current is None:  # nothing to keep serving: the last good build instead
                return self._fall_back(uri)
            self.fallback = (
                f"CURRENT names {uri}, which was refused; still serving {current.manifest_uri}"
            )
            return "refused"
        self._swap(fresh)
        return "swapped"

    def _swap(
        self,
        fresh: ServedIndex,
        refused: str | None = None,
        last_error: str | None = None,
        fallback: str | None = None,
    ) -> None:
        """Serve ``fresh``; what /readyz reports of the refused build (none, or CURRENT's when
        ``fresh`` is a fallback) changes with it, so no reader sees the new index with the old
        state."""
        with self._lock:
            # The state first: a reader without the lock that sees ``fresh`` sees its state too.
            self._refused, self.last_error, self.fallback = refused, last_error, fallback
            old, self._current = self._current, fresh
            close_old = old is not None and old.users == 0
            if old is not None:
                old.retired = True
        if close_old:
            assert old is not None
            old.close()
        log.info("serving index %s (was %s)", fresh.manifest_uri, old and old.manifest_uri)
        self._notify("swapped", fresh, fresh.manifest_uri)
        settle_garbage()  # last: everything a reader sees of the swap is in place before the pause

    def _fall_back(self, refused: str) -> str:
        """Serve the newest verified build that loads, when CURRENT's cannot be loaded at start."""
        error = self.last_error
        for uri in publish.verified_manifests(self._workdir):
            if uri == refused:
                continue
            try:
                fresh = self._load(uri, None)
            except Exception as e:  # that one is damaged too: the next older one
                log.error("fallback index %s refused too: %s: %s", uri, type(e).__name__, e)
                continue
            fallback = (
                f"CURRENT names {refused}, which was refused; serving {uri} instead, the newest "
                "build that verifies"
            )
            # CURRENT's build is still the refused one.
            self._swap(fresh, refused=refused, last_error=error, fallback=fallback)
            log.warning("%s", fallback)
            return "fallback"
        self.last_error = f"{error}; no earlier verified build loads either"
        return "refused"

    def start(self) -> None:
        """Poll CURRENT in the background (the first check runs on the thread too)."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.check_once()
                except Exception as e:  # e.g. storage unreachable: log, keep serving, retry
                    self.last_error = f"cannot read {self._pointer}: {e}"
                    log.exception("index watcher")
                self._stop.wait(self._poll_s)

        self._thread = threading.Thread(target=loop, name="index-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            served, self._current = self._current, None
        if served is not None:
            served.close()
