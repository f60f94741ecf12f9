"""The attributes of the listings an index holds: what filters check and what results show.

Source, in order of preference:

1. The catalog snapshot the index was built from (``--catalog``): category, colour, shape,
   material and title as the marketplace states them. The snapshot's date is the one the
   build-index run summary records for the index's build id (``runs/dt=D/build-index.json``);
   without one, the newest snapshot not after the manifest's creation day.
2. Without a catalog: the shard id maps alone (``shard-*.ids.parquet``), whose category is the
   model's *predicted* category; colour, shape and material are then not available, and a
   filter on them is refused rather than answered wrongly.

Each shard row is mapped to a listing code once at load, so a filter becomes one boolean mask
over listings and one gather per shard.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import paths, storage
from core.catalog import Listing
from index.manifest import Manifest
from vsearch.serve import filters

log = logging.getLogger(__name__)

DISPLAY = ("category", "color", "shape", "material", "title")
BUILD_STAGE = "build-index"


@dataclass(frozen=True)
class Attributes:
    listing_ids: pa.Array  # L listings (string)
    display: dict[str, list[Any]]  # column -> L values as stated (None when unknown)
    match: dict[str, pa.Array]  # filterable column -> L normalised values
    row_listing: list[np.ndarray]  # per shard: row -> listing code (-1: no attributes)
    source: str  # where the attributes came from, for /readyz and the health page

    def of(self, code: int) -> dict[str, Any]:
        if code < 0:
            return {c: None for c in DISPLAY}
        return {c: self.display[c][code] for c in DISPLAY}

    def allowed_rows(self, f: filters.Filter) -> list[np.ndarray]:
        """Per shard, which rows belong to a listing that satisfies ``f``."""
        keep = np.append(filters.mask(f, self.match), False)  # code -1 -> the False at the end
        return [keep[codes] for codes in self.row_listing]


def _codes(listing_ids: pa.Array, id_maps: list[pa.Table]) -> list[np.ndarray]:
    out = []
    for ids in id_maps:
        idx = pc.index_in(ids.column("listing_id"), value_set=listing_ids)
        out.append(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64))
    return out


def _norm(values: list[Any]) -> pa.Array:
    return pa.array([filters.normalise(v) if v is not None else None for v in values], pa.string())


def from_listings(listings: list[Listing], id_maps: list[pa.Table], source: str) -> Attributes:
    ids = pa.array([x.listing_id for x in listings], pa.string())
    display = {c: [getattr(x, c) for x in listings] for c in DISPLAY}
    match = {c: _norm(display[c]) for c in filters.FIELDS}
    match["category"] = _norm([(c or "").strip("/") or None for c in display["category"]])
    return Attributes(ids, display, match, _codes(ids, id_maps), source)


def from_id_maps(id_maps: list[pa.Table]) -> Attributes:
    """Listings and their predicted category from the shard id maps (no catalog)."""
    if id_maps:
        t = pa.concat_tables([m.select(["listing_id", "category_pred"]) for m in id_maps])
        t = t.group_by("listing_id", use_threads=False).aggregate([("category_pred", "first")])
        ids, cats = t.column("listing_id").combine_chunks(), t.column(1).to_pylist()
    else:
        ids, cats = pa.array([], pa.string()), []
    display: dict[str, list[Any]] = {c: [None] * len(ids) for c in DISPLAY}
    display["category"] = cats
    match = {"category": _norm([(c or "").strip("/") or None for c in cats])}
    return Attributes(ids, display, match, _codes(ids, id_maps), "id maps (predicted category)")


def snapshot_date(workdir: str, catalog: str, manifest: Manifest) -> str:
    """The catalog day an index was built from (see the module docstring)."""
    runs_root = storage.parent(storage.parent(paths.run_summary(workdir, BUILD_STAGE, "x")))
    summaries = [u for u in storage.list_prefix(runs_root) if u.endswith(f"/{BUILD_STAGE}.json")]
    for uri in sorted(summaries, reverse=True):
        try:
            summary = json.loads(storage.read_text(uri))
        except (storage.StorageError, ValueError):
            continue
        if summary.get("extra", {}).get("build_id") == manifest.build_id:
            return str(summary["date"])
    built = manifest.created_at[:10]
    listings = storage.glob(storage.join(catalog, "dt=*", "listings.*"))
    days = sorted(
        {
            storage.basename(storage.parent(uri))[3:]
            for uri in listings
            if storage.basename(storage.parent(uri))[3:] <= built
        }
    )
    if not days:
        raise FileNotFoundError(
            f"no catalog snapshot under {catalog} on or before {built} for index build "
            f"{manifest.build_id}"
        )
    return days[-1]


def load(
    workdir: str, catalog: str | None, manifest: Manifest, id_maps: list[pa.Table]
) -> tuple[Attributes, list[Any]]:
    """The attributes of an index's listings and the snapshot's reviews ([] without a catalog)."""
    if catalog is None:
        return from_id_maps(id_maps), []
    from core.snapshot import read_snapshot

    day = snapshot_date(workdir, catalog, manifest)
    dt.date.fromisoformat(day)  # a malformed folder name is an error here, not a wrong filter
    snapshot = read_snapshot(catalog, day, stage="serve")
    attrs = from_listings(snapshot.listings, id_maps, f"catalog snapshot dt={day}")
    missing = int(sum((c < 0).sum() for c in attrs.row_listing))
    if missing:
        log.warning("%d indexed images have no listing in %s", missing, attrs.source)
    return attrs, list(snapshot.reviews)
