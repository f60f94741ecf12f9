"""The index manifest (``manifest.json``) of docs/DESIGN.md: frozen dataclasses, read/write.

A manifest is written last, and only for a build whose validation passed; ``CURRENT`` points at
one. Shard and id-map paths are relative to the manifest's directory, so a build can be copied
or moved (e.g. from a laptop to gs://) and still read.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from core import storage
from index.shard_plan import PCA_FILE

# 2: id maps and pca.bin carry a sha256 too (``ids_sha256``, ``pca_sha256``). Version 1
# manifests (shard sha256 only) are still read; their id maps and PCA are not verifiable.
# 3: an on-disk build (``--on-disk``): the shards are also merged into one index whose lists
# live in a file (``merged``), which is what a reader must serve. Written only for such builds,
# so that a version-2 reader refuses one (it would otherwise load every shard into RAM).
FORMAT_VERSION = 2
ON_DISK_FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
METRIC = "inner_product"


class ManifestError(ValueError):
    """A manifest is missing, malformed, or inconsistent; the message names the file."""


@dataclass(frozen=True)
class ShardEntry:
    path: str  # relative to the manifest's directory, e.g. "shard-00000.faiss"
    sha256: str
    ntotal: int
    ids_path: str  # e.g. "shard-00000.ids.parquet"
    ids_sha256: str = ""  # of the id map's bytes ("" only in format_version 1 manifests)


@dataclass(frozen=True)
class MergedEntry:
    """The shards merged on disk (index/ondisk.py): an index file and its inverted-list file,
    side by side in the build directory; the index finds its lists by name beside it."""

    index_path: str  # e.g. "merged.faiss" (quantizer + list sizes; small)
    index_sha256: str
    lists_path: str  # e.g. "merged.ivfdata" (every code and id; memory-mapped when served)
    lists_sha256: str


@dataclass(frozen=True)
class Validation:
    recall_at_10: float  # of the sharded index vs exact inner-product search
    sample_size: int  # number of validation queries
    latency_ms_p50: float  # single query, all shards, merged
    latency_ms_p99: float


@dataclass(frozen=True)
class NoMatchCalibration:
    """The no-match rule build-index chose on held-out buyer photos (search/calibrate.py).

    A search answers ``no_match`` when its best score is below ``threshold`` or, for a model with
    a localiser, when the localiser's confidence that the photo shows an item at all is below
    ``item_threshold``. Both error rates are measured on the same photos: searched with their
    listing in the index, and with it left out (the best score among the other listings: what a
    photo of an unsold product gets).
    """

    threshold: float
    target_false_accept_rate: float | None  # the rate a score-only threshold was chosen for
    false_accept_rate: float  # listing left out: share of searches the rule accepts
    right_first_flagged: float  # share of searches whose first result is right that it flags
    photos: int  # held-out buyer photos searched
    right_first: int  # of them, how many found their own listing first
    method: str
    item_threshold: float | None = None  # None: the score alone decides (no localiser)
    target_right_first_flagged: float | None = None  # the share the rule was chosen for


@dataclass(frozen=True)
class Manifest:
    model_version: str
    build_id: str
    created_at: str  # ISO 8601, UTC
    input_dim: int
    dim: int  # after PCA
    factory: str
    search_params: dict[str, int] = field(default_factory=dict)
    shards: tuple[ShardEntry, ...] = ()
    ntotal: int = 0
    validation: Validation | None = None
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    pca_sha256: str | None = None  # of pca.bin; None when there is no PCA (or format 1)
    merged: MergedEntry | None = None  # format 3 only: serve this, not the shards' indexes
    # Optional in every format (a reader that predates it ignores it; the service then
    # calibrates at start): written by build-index after the index, before publish.
    calibration: NoMatchCalibration | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        if self.merged is None:
            d.pop("merged")
        if self.calibration is None:
            d.pop("calibration")
        if self.format_version < 2:  # rewrite an old manifest as it was (no checksums to add)
            d.pop("pca_sha256")
            for s in d["shards"]:
                s.pop("ids_sha256")
        return {k: d[k] for k in _FIELD_ORDER if k in d}

    def files(self) -> list[str]:
        """Every file the build lists, relative to the manifest's directory (not pca.bin)."""
        names = [n for s in self.shards for n in (s.path, s.ids_path)]
        if self.merged is not None:
            names += [self.merged.index_path, self.merged.lists_path]
        return names

    def checksums(self) -> list[tuple[str, str | None, str]]:
        """(file, sha256, what) for every file of the build, pca.bin included; sha256 None
        where a format-1 manifest recorded none (its id maps and PCA)."""
        out: list[tuple[str, str | None, str]] = []
        for s in self.shards:
            out += [(s.path, s.sha256, "index shard"), (s.ids_path, s.ids_sha256 or None, "id map")]
        if self.merged is not None:
            out += [
                (self.merged.index_path, self.merged.index_sha256, "index"),
                (self.merged.lists_path, self.merged.lists_sha256, "lists"),
            ]
        if self.dim < self.input_dim:
            out.append((PCA_FILE, self.pca_sha256, "PCA"))
        return out

    def check(self) -> None:
        """Raise ManifestError unless the manifest is internally consistent."""
        problems = []
        if self.format_version not in READABLE_VERSIONS:
            problems.append(
                f"format_version {self.format_version} (this code reads {READABLE_VERSIONS})"
            )
        if self.metric != METRIC:
            problems.append(f"metric {self.metric!r} (expected {METRIC!r})")
        if not self.shards:
            problems.append("no shards")
        if sum(s.ntotal for s in self.shards) != self.ntotal:
            problems.append(f"ntotal {self.ntotal} != sum of shard ntotal")
        if not 0 < self.dim <= self.input_dim:
            problems.append(f"dim {self.dim} not in 1..input_dim {self.input_dim}")
        verified = self.format_version >= 2  # format 2 checksums every file it lists
        for s in self.shards:
            if len(s.sha256) != 64 or "/" in s.path or "/" in s.ids_path:
                problems.append(f"bad shard entry {s}")
            if verified and len(s.ids_sha256) != 64:
                problems.append(f"shard {s.path}: id map {s.ids_path} has no sha256")
        if verified and (self.dim < self.input_dim) != (self.pca_sha256 is not None):
            problems.append(
                f"pca_sha256 {self.pca_sha256!r} does not match dim {self.input_dim}->{self.dim}"
            )
        on_disk = self.format_version == ON_DISK_FORMAT_VERSION
        if on_disk != (self.merged is not None):
            problems.append(
                f"format_version {self.format_version} with merged={self.merged is not None} "
                f"(an on-disk build is format {ON_DISK_FORMAT_VERSION} and only that)"
            )
        m = self.merged
        if m is not None and (
            len(m.index_sha256) != 64
            or len(m.lists_sha256) != 64
            or "/" in m.index_path + m.lists_path
        ):
            problems.append(f"bad merged entry {m}")
        if self.pca_sha256 is not None and len(self.pca_sha256) != 64:
            problems.append(f"pca_sha256 {self.pca_sha256!r} is not a sha256")
        if problems:
            raise ManifestError(f"manifest of build {self.build_id}: " + "; ".join(problems))


_FIELD_ORDER = (
    "format_version",
    "model_version",
    "build_id",
    "created_at",
    "input_dim",
    "dim",
    "pca_sha256",
    "metric",
    "factory",
    "search_params",
    "shards",
    "merged",
    "ntotal",
    "validation",
    "calibration",
)


def new_build_id(now: dt.datetime | None = None) -> str:
    """``20260101T120000Z-a1b2c3``: sorts by time; the random part keeps concurrent builds apart."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def from_json(d: dict[str, Any], source: str = "manifest") -> Manifest:
    try:
        v = d.get("validation")
        merged = d.get("merged")
        calib = d.get("calibration")
        m = Manifest(
            format_version=int(d["format_version"]),
            model_version=str(d["model_version"]),
            build_id=str(d["build_id"]),
            created_at=str(d["created_at"]),
            input_dim=int(d["input_dim"]),
            dim=int(d["dim"]),
            metric=str(d["metric"]),
            factory=str(d["factory"]),
            search_params={str(k): int(x) for k, x in dict(d["search_params"]).items()},
            shards=tuple(
                ShardEntry(
                    str(s["path"]),
                    str(s["sha256"]),
                    int(s["ntotal"]),
                    str(s["ids_path"]),
                    str(s.get("ids_sha256", "")),
                )
                for s in d["shards"]
            ),
            ntotal=int(d["ntotal"]),
            validation=Validation(**v) if v is not None else None,
            pca_sha256=None if d.get("pca_sha256") is None else str(d["pca_sha256"]),
            merged=None
            if merged is None
            else MergedEntry(**{k: str(x) for k, x in merged.items()}),
            calibration=None if calib is None else NoMatchCalibration(**calib),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(
            f"{source} is not a valid index manifest: {type(e).__name__}: {e}"
        ) from e
    m.check()
    return m


def write(uri: str, manifest: Manifest) -> None:
    """Write atomically (readers never see half a manifest)."""
    manifest.check()
    storage.write_text(uri, json.dumps(manifest.to_json(), indent=2) + "\n")


def read(uri: str) -> Manifest:
    try:
        text = storage.read_text(uri)
    except storage.StorageError as e:
        raise ManifestError(f"cannot read index manifest {uri}: {e}") from e
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{uri} is not JSON: {e}") from e
    return from_json(d, source=uri)


def require_validated(m: Manifest, source: str, min_recall: float = 0.0) -> Validation:
    """The manifest's validation, or ManifestError when it has none or is below ``min_recall``."""
    if m.validation is None:
        raise ManifestError(f"{source} has no validation: it cannot be published or served")
    if m.validation.recall_at_10 < min_recall:
        raise ManifestError(
            f"{source}: recall@10 {m.validation.recall_at_10:.4f} is below {min_recall:.4f}"
        )
    return m.validation
