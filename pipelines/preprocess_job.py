"""The preprocess stage's Beam job: catalog snapshot -> TF Transform -> transformed TFRecords and
transform_fn (the stage, its settings and its run summary: pipelines/preprocess.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from core import catalog, paths, runs, storage
from core.hashing import stable_fraction
from core.runs import METRICS_NAMESPACE
from models import features as F
from pipelines.preprocess import STAGE, PreprocessSettings
from pipelines.stage import run_pipeline
from transforms.dead_letter_output import DEAD_LETTER_TAG, WriteDeadLetters, dead_letter
from transforms.progress import LogProgress

_IMAGES = "preprocess_images"
_ROWS = "preprocess_rows"
_REJECTED_ROWS = "preprocess_rejected_catalog_rows"
_BAD_IMAGES = "preprocess_bad_images"
_UNSAMPLED = "preprocess_images_not_sampled"


def _in_sample(listing_id: str, max_listings: int, total: int) -> bool:
    """The day's training sample: a stable hash of the listing id under max/total, so a listing
    and its review photos are in or out together, on every worker, and mostly the same listings
    from one day to the next."""
    return total <= max_listings or stable_fraction(f"sample:{listing_id}") < max_listings / total


def _keep_listing(listing: catalog.Listing, max_listings: int, total: int) -> bool:
    keep = _in_sample(listing.listing_id, max_listings, total)
    if not keep:
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, _UNSAMPLED).inc(len(listing.image_uris))
    return keep


def _keep_review(review: catalog.Review, max_listings: int, total: int) -> bool:
    keep = _in_sample(review.listing_id, max_listings, total)
    if not keep:
        _count(_UNSAMPLED)
    return keep


def _count(name: str) -> None:
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc()


def _labels(listing: catalog.Listing) -> dict[str, bytes]:
    return {label: (getattr(listing, label) or "").encode() for label in F.LABEL_KEYS}


def _refs(listing: catalog.Listing) -> list[catalog.ImageRef]:
    return catalog.listing_images(listing)


def _counted_ref(ref: catalog.ImageRef) -> catalog.ImageRef:
    _count(_IMAGES)
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
            _count(_ROWS)
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


def output_dir(settings: PreprocessSettings) -> str:
    return paths.transformed_dir(settings.workdir, settings.date)


def transform_and_write(
    train: beam.PCollection, evaluation: beam.PCollection, settings: PreprocessSettings
) -> None:
    """TFT on raw rows (``features.raw_feature_spec``): analyse+transform train, transform eval, write."""
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
        for name, data, shards in (
            ("train", transformed_train, settings.train_shards),
            ("eval", transformed_eval, settings.eval_shards),
        ):
            _ = (
                data
                | f"Encode{name.title()}" >> tft_beam.EncodeTransformedDataset()
                | f"Write{name.title()}"
                >> beam.io.WriteToTFRecord(
                    storage.join(out_dir, name), file_name_suffix=".tfrecord.gz", num_shards=shards
                )
            )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(out_dir)


def build(p: beam.Pipeline, settings: PreprocessSettings) -> None:
    """The whole stage as labelled steps on ``p`` (``run`` adds option parsing and the summary)."""
    from transforms.read_catalog import ReadCatalog
    from transforms.read_images import MAIN_TAG, ReadImages

    cat = p | "ReadCatalog" >> ReadCatalog(
        settings.catalog, settings.date, settings.allowed_buckets, stage=STAGE
    )
    total = beam.pvalue.AsSingleton(
        cat["listings"] | "CountListings" >> beam.combiners.Count.Globally()
    )
    listings = cat["listings"] | "SampleListings" >> beam.Filter(
        _keep_listing, settings.max_listings, total
    )
    reviews = cat["reviews"] | "SampleReviews" >> beam.Filter(
        _keep_review, settings.max_listings, total
    )
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
    transform_and_write(train, evaluation, settings)
    dead = (
        cat[DEAD_LETTER_TAG] | "CountRejectedRows" >> beam.Map(_count_dead, _REJECTED_ROWS),
        decoded[DEAD_LETTER_TAG] | "CountBadImages" >> beam.Map(_count_dead, _BAD_IMAGES),
        joined[DEAD_LETTER_TAG] | "CountOrphans" >> beam.Map(_count_dead, _BAD_IMAGES),
    ) | "AllDeadLetters" >> beam.Flatten()
    _ = dead | "WriteDeadLetters" >> WriteDeadLetters(settings.workdir, STAGE, settings.date)


def _remove_tft_temp(uri: str) -> None:
    """TFT's temp dir: objects on GCS; locally also the empty folders it leaves behind."""
    storage.delete_prefix(uri)
    if not storage.is_gcs(uri):
        shutil.rmtree(uri.removeprefix("file://"), ignore_errors=True)


def run_job(
    settings: PreprocessSettings,
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> runs.RunSummary:
    """Run the job for one date; returns its run summary (the stage records it)."""
    # Idempotent for the date: stale shards of an earlier run never mix in.
    storage.delete_prefix(output_dir(settings))
    job = run_pipeline(
        STAGE,
        settings.workdir,
        settings.date,
        lambda p: build(p, settings),
        pipeline_args,
        test_pipeline,
    )
    _remove_tft_temp(storage.join(output_dir(settings), "tmp"))
    c = job.counters
    rejected, bad, rows = c.get(_REJECTED_ROWS, 0), c.get(_BAD_IMAGES, 0), c.get(_ROWS, 0)
    unsampled = c.get(_UNSAMPLED, 0)
    return runs.RunSummary(
        STAGE,
        settings.date,
        read=c.get(_IMAGES, 0) + unsampled + rejected,
        ok=rows,
        dead_lettered=rejected + bad,
        skipped=unsampled,  # outside the day's training sample (--max-listings)
        wall_s=job.wall_s,
        extra={
            "max_listings": settings.max_listings,
            "image_size": settings.image_size,
            "eval_fraction": settings.eval_fraction,
            "output": output_dir(settings),
        },
    )
