"""The preprocess stage's Beam job: catalog snapshot -> TF Transform -> transformed TFRecords and
transform_fn (the stage, its settings and its run summary: pipelines/preprocess.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from core import catalog, storage
from core.hashing import stable_fraction
from core.runs import METRICS_NAMESPACE
from models import features as F
from pipelines.job_record import JobRecord
from pipelines.preprocess import (
    BAD_IMAGES,
    IMAGES,
    REJECTED_ROWS,
    ROWS,
    STAGE,
    UNSAMPLED,
    PreprocessSettings,
    output_dir,
)
from pipelines.stage import BeamRun, run_pipeline
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters, dead_letter
from transforms.job_counts import COUNTS_TAG, CountAs, WriteJobCounts, tally
from transforms.progress import LogProgress


def _in_sample(listing_id: str, max_listings: int, total: int) -> bool:
    """The day's training sample: a stable hash of the listing id under max/total, so a listing
    and its review photos are in or out together, on every worker, and mostly the same listings
    from one day to the next."""
    return total <= max_listings or stable_fraction(f"sample:{listing_id}") < max_listings / total


def _sample_listing(listing: catalog.Listing, max_listings: int, total: int) -> Iterator[Any]:
    """The listing if it is in the day's sample, else a tally of its photos left out."""
    if _in_sample(listing.listing_id, max_listings, total):
        yield listing
    else:
        yield tally(UNSAMPLED, len(listing.image_uris))


def _sample_review(review: catalog.Review, max_listings: int, total: int) -> Iterator[Any]:
    if _in_sample(review.listing_id, max_listings, total):
        yield review
    else:
        yield tally(UNSAMPLED)


def _count(name: str) -> None:
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc()


def _labels(listing: catalog.Listing) -> dict[str, bytes]:
    return {label: (getattr(listing, label) or "").encode() for label in F.LABEL_KEYS}


def _refs(listing: catalog.Listing) -> list[catalog.ImageRef]:
    return catalog.listing_images(listing)


def _counted_ref(ref: catalog.ImageRef) -> catalog.ImageRef:
    _count(IMAGES)
    return ref


class _JoinLabels(beam.DoFn):
    """(listing_id, {labels: [..], images: [(kind, pixels, uri)]}) -> TFT raw rows, orphans -> dead letters."""

    def process(self, keyed: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        listing_id, groups = keyed
        labels = list(groups["labels"])
        for kind, pixels, uri in groups["images"]:
            if not labels:
                yield dead_letter(
                    STAGE, "review of a listing that is not in the snapshot", listing_id, uri
                )
                continue
            _count(ROWS)
            yield {
                F.IMAGE_KEY: pixels,
                F.LISTING_ID_KEY: listing_id.encode(),
                F.KIND_KEY: kind.encode(),
                **labels[0],
            }


def _image_row(decoded: Any) -> tuple[str, tuple[str, Any, str]]:
    ref = decoded.ref
    return ref.listing_id, (ref.kind, decoded.rgb, ref.uri)


def _count_dead(letter: Any, counter: str) -> Any:
    _count(counter)
    return letter


def _split(row: dict[str, Any], num_partitions: int, eval_fraction: float) -> int:
    """Partition 1 = eval: the stable per-listing hash split shared with every other stage."""
    return int(catalog.is_eval_listing(row[F.LISTING_ID_KEY].decode(), eval_fraction))


def transform_and_write(
    train: beam.PCollection, evaluation: beam.PCollection, settings: PreprocessSettings
) -> list[beam.PCollection]:
    """TFT on raw rows (``features.raw_feature_spec``): analyse+transform train, transform eval,
    write; returns the writes' outputs (complete once the files are in place)."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    out_dir = output_dir(settings)
    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(F.raw_feature_spec(settings.image_size))
    )
    fn = F.make_preprocessing_fn(settings.image_size, settings.min_class_count)
    with tft_beam.Context(temp_dir=storage.join(out_dir, "tmp")):
        transformed_train, transform_fn = (
            train,
            metadata,
        ) | "AnalyzeAndTransformTrain" >> tft_beam.AnalyzeAndTransformDataset(
            fn, output_record_batches=True
        )
        transformed_eval = (
            (evaluation, metadata),
            transform_fn,
        ) | "TransformEval" >> tft_beam.TransformDataset(output_record_batches=True)
        written = []
        for name, data, shards in (
            ("train", transformed_train, settings.train_shards),
            ("eval", transformed_eval, settings.eval_shards),
        ):
            written.append(
                data
                | f"Encode{name.title()}" >> tft_beam.EncodeTransformedDataset()
                | f"Write{name.title()}"
                >> beam.io.WriteToTFRecord(
                    storage.join(out_dir, name), file_name_suffix=".tfrecord.gz", num_shards=shards
                )
            )
        written.append(transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(out_dir))
    return written


def build(p: beam.Pipeline, settings: PreprocessSettings, record: JobRecord) -> None:
    """The whole stage as labelled steps on ``p`` (``run`` adds option parsing and the summary);
    the job's counts go to ``record``'s counts file."""
    from transforms.read_catalog import ReadCatalog
    from transforms.read_images import MAIN_TAG, ReadImages

    cat = p | "ReadCatalog" >> ReadCatalog(
        settings.catalog, settings.date, settings.allowed_buckets, stage=STAGE
    )
    total = beam.pvalue.AsSingleton(
        cat["listings"] | "CountListings" >> beam.combiners.Count.Globally()
    )
    sampled_listings = cat["listings"] | "SampleListings" >> beam.FlatMap(
        _sample_listing, settings.max_listings, total
    ).with_outputs(COUNTS_TAG, main="kept")
    sampled_reviews = cat["reviews"] | "SampleReviews" >> beam.FlatMap(
        _sample_review, settings.max_listings, total
    ).with_outputs(COUNTS_TAG, main="kept")
    listings, reviews = sampled_listings.kept, sampled_reviews.kept
    listing_refs = listings | "ListingImages" >> beam.FlatMap(_refs)
    review_refs = reviews | "ReviewImages" >> beam.Map(catalog.review_image)
    refs = (
        (listing_refs, review_refs)
        | "AllImages" >> beam.Flatten()
        | "CountImages" >> beam.Map(_counted_ref)
    )
    decoded = refs | "ReadImages" >> ReadImages(STAGE, settings.image_size)
    images = decoded[MAIN_TAG]
    _ = images | "Progress" >> LogProgress(STAGE, "images decoded")
    labels = listings | "KeyLabels" >> beam.Map(
        lambda listing: (listing.listing_id, _labels(listing))
    )
    keyed_images = images | "KeyByListing" >> beam.Map(_image_row)
    joined = (
        {"labels": labels, "images": keyed_images}
        | "JoinByListing" >> beam.CoGroupByKey()
        | "ToRows" >> beam.ParDo(_JoinLabels()).with_outputs(DEAD_LETTER_TAG, main="rows")
    )
    train, evaluation = joined.rows | "SplitByListing" >> beam.Partition(
        _split,  # type: ignore[arg-type]  # Beam's stubs want a PartitionFn; a function is fine
        2,
        settings.eval_fraction,
    )
    written = transform_and_write(train, evaluation, settings)
    dead = (
        cat[DEAD_LETTER_TAG] | "CountRejectedRows" >> beam.Map(_count_dead, REJECTED_ROWS),
        decoded[DEAD_LETTER_TAG] | "CountBadImages" >> beam.Map(_count_dead, BAD_IMAGES),
        joined[DEAD_LETTER_TAG] | "CountOrphans" >> beam.Map(_count_dead, BAD_IMAGES),
    ) | "AllDeadLetters" >> beam.Flatten()
    dead_written = dead | "WriteDeadLetters" >> WriteDeadLetters(
        settings.workdir, STAGE, settings.date
    )
    # The counts the run summary reports, as the Beam counters above count them, written by the
    # job once its outputs are (pipelines/job_record.py): a later process can finish the day.
    counts = (
        sampled_listings[COUNTS_TAG],
        sampled_reviews[COUNTS_TAG],
        refs | "TallyImages" >> CountAs(IMAGES),
        joined.rows | "TallyRows" >> CountAs(ROWS),
        cat[DEAD_LETTER_TAG] | "TallyRejectedRows" >> CountAs(REJECTED_ROWS),
        decoded[DEAD_LETTER_TAG] | "TallyBadImages" >> CountAs(BAD_IMAGES),
        joined[DEAD_LETTER_TAG] | "TallyOrphans" >> CountAs(BAD_IMAGES),
    )
    _ = counts | "WriteJobCounts" >> WriteJobCounts(
        record.counts_uri, record.header(), after=[*written, dead_written]
    )


def run_job(
    settings: PreprocessSettings,
    record: JobRecord,
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> BeamRun:
    """Run (or, for a template launch, only describe) the job for one date; it writes its
    outputs and then ``record``'s counts file."""
    # Idempotent for the date: stale shards of an earlier run never mix in.
    storage.delete_prefix(output_dir(settings))
    return run_pipeline(
        STAGE,
        settings.workdir,
        settings.date,
        lambda p: build(p, settings, record),
        pipeline_args,
        test_pipeline,
        finishes_later=True,
    )
