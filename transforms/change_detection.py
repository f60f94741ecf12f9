"""AttachMetadataKeys: each listing photo's object metadata key, from prefix listings only.

    listings -> photo URIs -> their listing units (distinct) -> ListUnits (one list call per
    unit, spread over workers) -> CoGroupByKey on URI with the photos -> (listing_id, (image_index,
    uri, meta_key)) with ``meta_key`` "" when the object was not listed (the photo is then read).

No photo is opened and no object gets its own metadata request: at 500M photos a GET per object
would cost as much time as reading them. Objects listed but not in the catalog are dropped at the
join. A photo whose catalog row carries an ``image_checksums`` entry is keyed by it
("catalog=<checksum>") and is not listed at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from vsearch.core import objectmeta
from vsearch.core.catalog import Listing, listing_images
from vsearch.core.runs import METRICS_NAMESPACE

PhotoMeta = tuple[int, str, str]  # (image_index, uri, meta_key)


CHECKSUM_TAG = "checksum"


def _photos(keyed: tuple[str, Listing]) -> Iterator[Any]:
    """Photos to look up in listings; those with a catalog checksum are keyed by it directly."""
    listing = keyed[1]
    for ref in listing_images(listing):
        i = int(ref.image_index)
        checksum = listing.image_checksums[i] if listing.image_checksums else None
        if checksum:
            yield beam.pvalue.TaggedOutput(
                CHECKSUM_TAG, (ref.listing_id, (i, ref.uri, f"catalog={checksum}"))
            )
        else:
            yield ref.uri, (ref.listing_id, i)


class _ListUnit(beam.DoFn):
    def setup(self) -> None:
        self._listed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "metadata_listed")

    def process(self, unit: str) -> Iterator[tuple[str, str]]:
        for uri, key in objectmeta.list_unit(unit):
            self._listed.inc()
            yield uri, key


def _attach(joined: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[tuple[str, PhotoMeta]]:
    uri, groups = joined
    keys = list(groups["meta"])
    key = keys[0] if keys else ""
    for listing_id, index in groups["photo"]:
        yield listing_id, (index, uri, key)


@beam.ptransform_fn
def AttachMetadataKeys(listings: beam.PCollection) -> beam.PCollection:  # noqa: N802
    """(listing_id, Listing) -> (listing_id, (image_index, uri, meta_key)) per listing photo."""
    split = listings | "Photos" >> beam.FlatMap(_photos).with_outputs(CHECKSUM_TAG, main="look")
    photos = split.look
    listed = (
        photos
        | "Units" >> beam.Map(lambda kv: objectmeta.listing_unit(kv[0]))
        | "DistinctUnits" >> beam.Distinct()
        | "SpreadUnits" >> beam.Reshuffle()
        | "ListUnits" >> beam.ParDo(_ListUnit())
    )
    from_listings = (
        {"photo": photos, "meta": listed}
        | "JoinMeta" >> beam.CoGroupByKey()
        | "AttachKeys" >> beam.FlatMap(_attach)
    )
    return (from_listings, split[CHECKSUM_TAG]) | "AllKeys" >> beam.Flatten()
