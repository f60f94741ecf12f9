"""`vsearch preprocess`: catalog snapshot -> TF Transform -> transformed TFRecords + transform_fn.

One row per image (listing photos and buyer review photos alike, labelled with their listing's
labels), split by listing (``catalog.is_eval_listing``: a listing's photos and its reviews never
straddle train and eval). ``AnalyzeAndTransformDataset`` on train, ``TransformDataset`` on eval,
``WriteTransformFn``. Images enter TFT as the PNG of the sanitised image (``images.decode_image``
-> ``images.encode_png``), the same bytes the embed and query stages feed the exported model, so
the TFT graph decodes training and serving images identically.

Outputs under ``WORKDIR/transformed/dt=D/``: ``train-NNNNN-of-NNNNN.tfrecord.gz``,
``eval-NNNNN-of-NNNNN.tfrecord.gz``, ``transform_fn/``, ``transformed_metadata/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from models import features as F
from transforms.deadletter import DEAD_LETTER_TAG, WriteDeadLetters, dead_letter
from transforms.progress import LogProgress
from vsearch.core import catalog, paths, runs, storage
from vsearch.core.deadletter import clear_dead_letters
from vsearch.core.runs import METRICS_NAMESPACE

STAGE = "preprocess"
_IMAGES = "preprocess_images"
_ROWS = "preprocess_rows"
_REJECTED_ROWS = "preprocess_rejected_catalog_rows"
_BAD_IMAGES = "preprocess_bad_images"


@dataclass(frozen=True)
class PreprocessSettings:
    catalog: str
    date: str
    workdir: str
    # The model's input size; 96 px keeps CPU training to minutes and still shows pattern detail.
    image_size: int = F.DEFAULT_IMAGE_SIZE
    # 20% of listings (and all their reviews) held out for the retrieval test and the gate.
    eval_fraction: float = 0.2
    # Classes rarer than this in the train split fold into the OOV ("other") class.
    min_class_count: int = F.DEFAULT_MIN_CLASS_COUNT
    allowed_buckets: tuple[str, ...] = ()
    # Fixed shard counts give deterministic file names, so a re-run replaces every file.
    train_shards: int = 4
    eval_shards: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


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
    """(listing_id, {labels: [..], images: [(kind, png, uri)]}) -> TFT raw rows, orphans -> dead letters."""

    def process(self, keyed: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        listing_id, groups = keyed
        labels = list(groups["labels"])
        for kind, png, uri in groups["images"]:
            if not labels:
                yield dead_letter(
                    STAGE, "review of a listing that is not in the snapshot", listing_id, uri
                )
                continue
            _count(_ROWS)
            yield {
                F.IMAGE_KEY: png,
                F.LISTING_ID_KEY: listing_id.encode(),
                F.KIND_KEY: kind.encode(),
                **labels[0],
            }


def _image_row(decoded: Any) -> tuple[str, tuple[str, bytes, str]]:
    from vsearch.core import images

    ref = decoded.ref
    return ref.listing_id, (ref.kind, images.encode_png(decoded.rgb), ref.uri)


def _count_dead(letter: Any, counter: str) -> Any:
    _count(counter)
    return letter


def _split(row: dict[str, bytes], num_partitions: int, eval_fraction: float) -> int:
    """Partition 1 = eval: the stable per-listing hash split shared with every other stage."""
    return int(catalog.is_eval_listing(row[F.LISTING_ID_KEY].decode(), eval_fraction))


def _output_dir(settings: PreprocessSettings) -> str:
    return paths.transformed_dir(settings.workdir, settings.date)


def transform_and_write(
    train: beam.PCollection, evaluation: beam.PCollection, settings: PreprocessSettings
) -> None:
    """TFT on raw rows (``features.raw_feature_spec``): analyse+transform train, transform eval, write."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    out_dir = _output_dir(settings)
    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(F.raw_feature_spec())
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
    listing_refs = cat["listings"] | "ListingImages" >> beam.FlatMap(_refs)
    review_refs = cat["reviews"] | "ReviewImages" >> beam.Map(catalog.review_image)
    refs = (
        (listing_refs, review_refs)
        | "AllImages" >> beam.Flatten()
        | "CountImages" >> beam.Map(_counted_ref)
    )
    decoded = refs | "ReadImages" >> ReadImages(STAGE, settings.image_size)
    images = decoded[MAIN_TAG]
    _ = images | "Progress" >> LogProgress(STAGE, "images decoded")
    labels = cat["listings"] | "KeyLabels" >> beam.Map(
        lambda listing: (listing.listing_id, _labels(listing))
    )
    keyed_images = images | "EncodePNG" >> beam.Map(_image_row)
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


def run(
    settings: PreprocessSettings,
    pipeline_args: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> runs.RunSummary:
    # Idempotent for the date: stale shards or dead letters of an earlier run never mix in.
    storage.delete_prefix(_output_dir(settings))
    clear_dead_letters(settings.workdir, STAGE, settings.date)
    with runs.stopwatch() as clock:
        p = test_pipeline or beam.Pipeline(options=PipelineOptions(pipeline_args or []))
        build(p, settings)
        result = p.run()
        result.wait_until_finish()
    _remove_tft_temp(storage.join(_output_dir(settings), "tmp"))
    c = runs.counters(result)
    rejected, bad, rows = c.get(_REJECTED_ROWS, 0), c.get(_BAD_IMAGES, 0), c.get(_ROWS, 0)
    summary = runs.RunSummary(
        STAGE,
        settings.date,
        read=c.get(_IMAGES, 0) + rejected,
        ok=rows,
        dead_lettered=rejected + bad,
        wall_s=clock["s"],
        extra={
            "image_size": settings.image_size,
            "eval_fraction": settings.eval_fraction,
            "output": _output_dir(settings),
        },
    )
    runs.write_summary(settings.workdir, summary)
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vsearch preprocess",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--date", required=True, type=paths.parse_date)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--image-size", type=int, default=PreprocessSettings.image_size)
    parser.add_argument("--eval-fraction", type=float, default=PreprocessSettings.eval_fraction)
    parser.add_argument("--min-class-count", type=int, default=PreprocessSettings.min_class_count)
    parser.add_argument(
        "--allowed-bucket", action="append", default=[], help="gs:// bucket images may come from"
    )
    args, beam_args = parser.parse_known_args(argv)
    date: dt.date = args.date
    settings = PreprocessSettings(
        catalog=args.catalog,
        date=date.isoformat(),
        workdir=args.workdir,
        image_size=args.image_size,
        eval_fraction=args.eval_fraction,
        min_class_count=args.min_class_count,
        allowed_buckets=tuple(args.allowed_bucket),
    )
    run(settings, beam_args)
    return 0


if __name__ == "__main__":  # the Airflow Beam operator runs `python -m MODULE --flag=value ...`
    import sys as _sys

    _sys.exit(main(_sys.argv[1:]))
