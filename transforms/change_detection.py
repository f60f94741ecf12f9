"""PhotosToRead: which listing photos the daily embed must read, decided in hash buckets.

    listings ─► PhotoTables ─(folder group, gs:// photos)─► GroupByKey ─► ListAndAttach
                 │           ─(listing bucket, photos + metadata keys)────┐
                 └─(listing bucket, photos keyed by checksum or stat)─────┤
    earlier partitions' keys ─► KnownTables ─(listing bucket)─────────────┼► CoGroupByKey
    earlier runs' state ─► StateTables ─(listing bucket)──────────────────┘
                 ─► Select ─► one PhotoToRead per photo that must be read
                          └► (listing bucket, the skipped photos' state rows), for today's state

Every element before ``Select`` is an Arrow table holding one bucket's share of a file or a
listing batch (a ``PackedTable``: it crosses the shuffle as compressed Arrow IPC, not as a pickle
of its buffers), and the joins are Arrow hash joins: an unchanged photo costs a few column
operations, never a Beam element of its own (at 500M photos a per-photo element, shuffled twice,
cost as much as the rest of a 1% day). Buckets are ``hashing.column_hashes`` of the listing id,
so a bucket's tables meet on one worker; ``buckets`` is chosen from the catalog size
(``buckets_for``) so that one bucket stays a few hundred thousand photos.

A local photo without a catalog checksum is keyed where the catalog is read, by one ``stat`` of
its file (no folder listing: it would stat every file anyway, and its readdir costs as much
again). A gs:// photo without one goes to the group of its *listing prefix*
(``objectmeta.listing_unit``; ``buckets x UNIT_GROUPS_PER_BUCKET`` groups), and the worker holding
a group lists its prefixes and joins the listing to its photos in memory: every photo of a prefix
is in the prefix's group, so a prefix is listed once and its listing never crosses a shuffle. A
catalog that keeps each listing's photos in its own folder has as many prefixes as listings, so
prefixes are grouped, never one Beam element each (0.48 ms per unchanged photo at 112k photos,
most of it pickling one small table per folder).

A photo is skipped without reading it when today's (slot, URI, metadata key) is in the state of
an earlier run *and* that run's sha256 has an embedding row for the slot: checked against every
earlier partition's keys, or known from the state itself when it is a snapshot whose partitions
are unchanged (``core/embedstate.py``; then no partition is read). Every other photo is
read (``PhotoToRead`` carries the slot's known sha256s, so a photo whose metadata changed but
whose bytes did not is still recognised after the read and not embedded again). The metadata key
is the catalog's ``image_checksums`` entry when there is one ("catalog=<checksum>": that photo is
never listed), else the listing's or the stat's (``core/objectmeta.py``), else "" (not
found: always read). No photo is opened here and no gs:// object gets its own metadata request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import embeddings, embedstate, objectmeta, storage
from core.hashing import column_hash, column_hashes
from core.runs import METRICS_NAMESPACE
from transforms.job_counts import COUNTS_TAG, tally
from transforms.packed_table import PackedTable, split_by

# A bucket is joined in one worker's memory: ~100 listings' worth of bytes per photo row, so
# 100k listings (~500k photos) is ~50 MB of keys, and 100M listings make 1,000 buckets.
LISTINGS_PER_BUCKET = 100_000
MAX_BUCKETS = 4096
# Folder listings are done in this many groups per bucket, each group on one worker: enough
# parallel work for a cluster, few enough elements to cost nothing per folder.
UNIT_GROUPS_PER_BUCKET = 8

SLOT = ["listing_id", "image_index"]
PHOTOS = pa.schema(
    [
        ("listing_id", pa.string()),
        ("image_index", pa.int32()),
        ("image_uri", pa.string()),
        ("meta_key", pa.string()),
    ]
)
LISTED = pa.schema([("image_uri", pa.string()), ("listed_key", pa.string())])
KNOWN = pa.schema(
    [("listing_id", pa.string()), ("image_index", pa.int32()), ("image_sha256", pa.string())]
)
STATE = pa.schema([*PHOTOS, ("image_sha256", pa.string())])
KEPT = "kept"  # Select's output of the skipped photos' state rows
TO_READ_ROWS = "to_read_rows"  # Select's output: how many photos of a bucket must be read
# The photos to read cross the shuffle that spreads them over workers in lists of this many: a
# Beam element per photo cost ~15 us in the shuffle alone (BENCHMARKS.md "Embed job").
READ_UNIT = 256


class PhotosSelected(NamedTuple):
    """``PhotosToRead``'s outputs."""

    to_read: beam.PCollection  # PhotoToRead
    kept: beam.PCollection  # (bucket, PackedTable of state rows): the photos skipped
    counts: beam.PCollection  # (name, n): files stat'ed and objects listed (job_counts)
    # One int: how many photos to_read holds, summed before the shuffle that spreads the reads,
    # so a step after the reads can take it as a side input and still fuse with them.
    to_read_total: beam.PCollection


class PhotoToRead(NamedTuple):
    listing_id: str
    image_index: int
    uri: str
    meta_key: str  # "" when the photo has none (it is read, and no state row is written)
    known_sha256: tuple[str, ...]  # the slot's sha256s that already have an embedding row


def buckets_for(listings: int | None) -> int:
    """How many hash buckets a catalog of ``listings`` rows is split into (1 for a small one)."""
    n = math.ceil((listings or 0) / LISTINGS_PER_BUCKET)
    return max(1, min(MAX_BUCKETS, n))


def split_by_bucket(
    table: pa.Table, column: str, buckets: int
) -> Iterator[tuple[int, PackedTable]]:
    """(bucket, rows of ``table`` in it) for every non-empty bucket of ``column``'s values, each
    packed for the shuffle that brings a bucket's tables together."""
    if table.num_rows == 0:
        return
    if buckets == 1:
        yield 0, PackedTable(table)
        return
    yield from split_by(table, column_hashes(table.column(column)) % np.uint64(buckets))


def bucket_of(listing_id: str, buckets: int) -> int:
    """``split_by_bucket``'s bucket of one listing id, for rows that come one at a time."""
    return column_hash(listing_id) % buckets


def _photo_tables(listings: pa.Table, buckets: int, list_objects: bool) -> Iterator[Any]:
    """A table of listings (``catalog_columns.LISTING_TABLE``) -> (listing bucket, photo table)
    for the photos keyed here (a catalog checksum, a local file's stat, or nothing when objects
    are not looked at), and (``by_folder``: folder group, photo table) for gs:// photos without
    a checksum, whose keys come from listings."""
    lengths = pc.list_value_length(listings["image_uris"]).to_numpy(zero_copy_only=False)
    uris = pc.list_flatten(listings["image_uris"])
    starts = np.cumsum(lengths) - lengths
    index = np.arange(len(uris)) - np.repeat(starts, lengths)
    owner = pa.array(np.repeat(np.arange(listings.num_rows), lengths))
    checksums = _photo_checksums(listings["image_checksums"], lengths)
    given = pc.fill_null(pc.not_equal(checksums, ""), False)
    keys = pc.if_else(given, pc.binary_join_element_wise("catalog=", checksums, ""), "")
    table = pa.Table.from_arrays(
        [listings["listing_id"].take(owner), pa.array(index, pa.int32()), uris, keys],
        schema=PHOTOS,
    )
    if not list_objects:
        yield from split_by_bucket(table, "listing_id", buckets)
        return
    # Keyed here, straight to the listing buckets: a catalog checksum, or a local file's stat.
    gcs = pc.starts_with(uris, storage.GCS_PREFIX)
    local = table.filter(pc.and_not(pc.invert(given), gcs))
    stated = local.set_column(
        PHOTOS.get_field_index("meta_key"),
        "meta_key",
        objectmeta.stat_keys(local.column("image_uri").to_pylist()),
    )
    yield tally("metadata_stat", local.num_rows)  # the run summary's ``files_stat``
    yield from split_by_bucket(
        pa.concat_tables([table.filter(given), stated]), "listing_id", buckets
    )
    # The rest (gs://, no checksum) to the group of its listing prefix.
    unkeyed = table.filter(pc.and_not(gcs, given))
    folders = unkeyed.append_column("unit", _units(unkeyed.column("image_uri")))
    for group, part in split_by_bucket(folders, "unit", buckets * UNIT_GROUPS_PER_BUCKET):
        # The folder is recomputed where it is listed: cheaper than shuffling it.
        yield beam.pvalue.TaggedOutput(
            "by_folder", (group, PackedTable(part.table.select(PHOTOS.names)))
        )


def _photo_checksums(column: pa.ChunkedArray | pa.Array, lengths: np.ndarray) -> pa.Array:
    """Per-listing checksum lists (null: none given) -> one checksum per photo, null where none."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    given = np.asarray(pc.is_valid(lists).to_numpy(zero_copy_only=False), dtype=bool)
    values = pc.list_flatten(lists)  # the given lists only, each as long as its image_uris
    where = np.full(int(lengths.sum()), -1, dtype=np.int64)
    where[np.flatnonzero(np.repeat(given, lengths))] = np.arange(len(values))
    return values.take(pa.array(where, mask=where < 0))


def _units(uris: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``objectmeta.listing_unit`` of each gs:// URI (the folder plus the name's first
    characters), on the whole column.

    Patterns without capture groups: RE2 then runs its DFA, ~9x faster than one
    ``^(.*)/[^/]*$`` capture per URI (0.05 vs 0.46 s for 112k URIs).
    """
    folder = pc.replace_substring_regex(uris, r"/[^/]*$", "")
    name = pc.replace_substring_regex(uris, r"^.*/", "")
    prefix = pc.utf8_slice_codeunits(name, 0, objectmeta.GCS_PREFIX_CHARS)
    return pc.binary_join_element_wise(folder, prefix, "/")


def _concat(tables: Iterable[PackedTable], schema: pa.Schema) -> pa.Table:
    parts = [t.table.cast(schema) for t in tables]
    return pa.concat_tables(parts) if parts else schema.empty_table()


class _ListAndAttach(beam.DoFn):
    """One folder group (gs:// photos without a catalog checksum): list their prefixes, give each
    photo its listed metadata key, then send the photos to their listing bucket."""

    def __init__(self, buckets: int) -> None:
        self._buckets = buckets

    def process(self, group: tuple[int, Iterable[PackedTable]]) -> Iterator[Any]:
        """(listing bucket, photo table)s, and (``COUNTS_TAG``) the objects listed."""
        photos = _concat(group[1], PHOTOS)
        units = pc.unique(_units(photos.column("image_uri"))).to_pylist()
        uris, keys = objectmeta.list_units(sorted(units))
        yield tally("metadata_listed", len(uris))
        listed = pa.Table.from_arrays([uris, keys], schema=LISTED)
        photos = photos.join(listed, "image_uri", join_type="left outer", use_threads=False)
        keyed = pc.fill_null(photos.column("listed_key"), "")  # not listed: "" (always read)
        photos = photos.set_column(photos.schema.get_field_index("meta_key"), "meta_key", keyed)
        yield from split_by_bucket(photos.select(PHOTOS.names), "listing_id", self._buckets)


def _known_tables(uri: str, buckets: int) -> Iterator[tuple[int, PackedTable]]:
    """An earlier partition's key columns (never the embeddings), split by listing bucket."""
    table = embeddings.open_parquet(uri).read(columns=list(embeddings.KEY_COLUMNS))
    yield from split_by_bucket(table.cast(KNOWN), "listing_id", buckets)


def _state_tables(uri: str, buckets: int) -> Iterator[tuple[int, PackedTable]]:
    """An earlier run's state file (core/embedstate.py), split by listing bucket.

    A file written with as many buckets as today's is one bucket already, and goes as it is: no
    hash of its rows. Were a row in the wrong bucket, its photo would only be read again, never
    wrongly skipped: it meets no photo of its slot there.
    """
    with storage.open_read(uri) as f:
        table = pq.read_table(f).select(STATE.names).cast(STATE)
    bucket = embedstate.file_bucket(uri, buckets)
    if bucket is not None and table.num_rows:
        yield bucket, PackedTable(table)
        return
    yield from split_by_bucket(table, "listing_id", buckets)


class _Select(beam.DoFn):
    """One listing bucket: photos, earlier keys and state -> the photos that must be read (lists
    of up to ``READ_UNIT``), and (``KEPT``) the state rows of those skipped, for this run's
    snapshot.

    ``state_checked``: the state is a snapshot whose embedding partitions are unchanged
    (``embedstate``), so its rows need no check against the partitions' keys (none are given).
    """

    def __init__(self, state_checked: bool) -> None:
        self._state_checked = state_checked

    def setup(self) -> None:
        counter = beam.metrics.Metrics.counter
        self._images = counter(METRICS_NAMESPACE, "images")
        self._skipped = counter(METRICS_NAMESPACE, "skipped_unchanged")
        self._by_meta = counter(METRICS_NAMESPACE, "skipped_by_metadata")

    def process(self, joined: tuple[int, dict[str, Iterable[PackedTable]]]) -> Iterator[Any]:
        bucket, groups = joined
        photos = _concat(groups["photos"], PHOTOS)
        if photos.num_rows == 0:
            return
        state = _concat(groups["state"], STATE)
        # (slot, URI, key) -> the sha256 an earlier run read under that key.
        was = state.group_by(PHOTOS.names).aggregate([("image_sha256", "max")])
        was = was.rename_columns([*PHOTOS.names, "was_sha256"])
        rows = photos.join(was, PHOTOS.names, join_type="left outer", use_threads=False)
        if self._state_checked:
            known = state.select(KNOWN.names)
            skip = pc.is_valid(rows.column("was_sha256"))
        else:
            known = _concat(groups["known"], KNOWN).group_by(KNOWN.names).aggregate([])
            known_flag = known.append_column("known", pa.repeat(True, known.num_rows))
            rows = rows.join(
                known_flag,
                [*SLOT, "was_sha256"],
                [*SLOT, "image_sha256"],
                join_type="left outer",
                use_threads=False,
            )
            skip = pc.fill_null(rows.column("known"), False)
        # State rows always carry a key, so a photo without one never matches and is read.
        kept = rows.filter(skip)
        to_read = rows.filter(pc.invert(skip)).select(PHOTOS.names)
        self._images.inc(photos.num_rows)
        self._skipped.inc(kept.num_rows)
        self._by_meta.inc(kept.num_rows)
        if kept.num_rows:
            kept = kept.select([*PHOTOS.names, "was_sha256"]).rename_columns(STATE.names)
            yield beam.pvalue.TaggedOutput(KEPT, (bucket, PackedTable(kept)))
        if to_read.num_rows == 0:
            return
        yield beam.pvalue.TaggedOutput(TO_READ_ROWS, to_read.num_rows)
        # The slot's known sha256s ride along: new metadata over old bytes is caught after the read.
        slots = to_read.select(SLOT).group_by(SLOT).aggregate([])
        ours = known.join(slots, SLOT, join_type="left semi", use_threads=False)
        shas: dict[tuple[str, int], set[str]] = {}
        for lid, i, sha in zip(*(ours.column(n).to_pylist() for n in KNOWN.names), strict=True):
            shas.setdefault((lid, i), set()).add(sha)
        unit: list[PhotoToRead] = []
        for lid, i, uri, key in zip(
            *(to_read.column(n).to_pylist() for n in PHOTOS.names), strict=True
        ):
            unit.append(PhotoToRead(lid, i, uri, key, tuple(sorted(shas.get((lid, i), ())))))
            if len(unit) == READ_UNIT:
                yield unit
                unit = []
        if unit:
            yield unit


@beam.ptransform_fn
def PhotosToRead(  # noqa: N802
    listings: beam.PCollection,
    key_files: Sequence[str],
    state_files: Sequence[str],
    buckets: int,
    list_objects: bool,
    state_checked: bool = False,
) -> PhotosSelected:
    """Listing tables (``catalog_columns.LISTING_TABLE``, from ``ReadListingTables``) ->
    ``PhotosSelected``: PhotoToRead for each photo not known unchanged, (bucket, table of the
    skipped photos' state rows), and the counts of what was looked at; see the module docstring.

    ``key_files``: earlier partitions of this model version; ``state_files``: earlier runs'
    metadata states (``state_checked``: one snapshot that needs no key files, see
    ``core/embedstate.py``); ``list_objects``: list the photos' folders (off: every
    photo is read).
    """
    p = listings.pipeline
    split = listings | "PhotoTables" >> beam.FlatMap(
        _photo_tables, buckets, list_objects
    ).with_outputs("by_folder", COUNTS_TAG, main="photos")
    keyed = (
        split.by_folder
        | "GroupByFolder" >> beam.GroupByKey()
        | "ListAndAttach"
        >> beam.ParDo(_ListAndAttach(buckets)).with_outputs(COUNTS_TAG, main="photos")
    )
    photos = (split.photos, keyed.photos) | "AllPhotos" >> beam.Flatten()
    known = (
        p
        | "KeyFiles" >> beam.Create(list(key_files))
        | "SpreadKeyFiles" >> beam.Reshuffle()
        | "KnownTables" >> beam.FlatMap(_known_tables, buckets)
    )
    state = (
        p
        | "StateFiles" >> beam.Create(list(state_files))
        | "SpreadStateFiles" >> beam.Reshuffle()
        | "StateTables" >> beam.FlatMap(_state_tables, buckets)
    )
    selected = (
        {"photos": photos, "known": known, "state": state}
        | "JoinKnown" >> beam.CoGroupByKey()
        | "Select"
        >> beam.ParDo(_Select(state_checked)).with_outputs(KEPT, TO_READ_ROWS, main="to_read")
    )
    counts = (split[COUNTS_TAG], keyed[COUNTS_TAG]) | "AllCounts" >> beam.Flatten()
    # A bucket yields up to all its photos (a full run): spread the reads over workers.
    return PhotosSelected(
        selected.to_read
        | "SpreadReads" >> beam.Reshuffle()
        | "PhotosOfUnit" >> beam.FlatMap(lambda unit: unit),
        selected[KEPT],
        counts,
        selected[TO_READ_ROWS] | "ToReadTotal" >> beam.CombineGlobally(sum),
    )
