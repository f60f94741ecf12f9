"""The daily training budget: preprocess reads a stable sample of the snapshot's listings."""

from __future__ import annotations

import pytest

from core.snapshot import read_snapshot
from pipelines.preprocess import PreprocessSettings
from pipelines.preprocess import run as preprocess
from pipelines.preprocess_job import _in_sample

DATE = "2026-01-01"


def test_the_sample_is_stable_and_sized() -> None:
    ids = [f"L{i:06d}" for i in range(20_000)]
    kept = [i for i in ids if _in_sample(i, 2_000, len(ids))]
    assert 1_800 < len(kept) < 2_200
    assert kept == [i for i in ids if _in_sample(i, 2_000, len(ids))]  # same answer every time
    assert all(_in_sample(i, 50_000, len(ids)) for i in ids[:100])  # under budget: everything


@pytest.mark.slow
def test_preprocess_trains_on_a_sample_and_accounts_for_the_rest(
    tiny_catalog: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import tensorflow_transform as tft

    from core import paths
    from models import dataset

    work = str(tmp_path / "work")
    snap = read_snapshot(tiny_catalog, DATE)
    summary = preprocess(
        PreprocessSettings(
            catalog=tiny_catalog, date=DATE, workdir=work, image_size=32, max_listings=15
        )
    )
    assert summary.read == summary.ok + summary.skipped + summary.dead_lettered
    sampled = {
        x.listing_id for x in snap.listings if _in_sample(x.listing_id, 15, len(snap.listings))
    }
    images_out = sum(len(x.image_uris) for x in snap.listings if x.listing_id not in sampled)
    reviews_out = sum(1 for r in snap.reviews if r.listing_id not in sampled)
    assert summary.skipped == images_out + reviews_out > 0
    tft_output = tft.TFTransformOutput(paths.transformed_dir(work, DATE))
    train_ids, _, _ = dataset.scan_train(dataset.split_files(work, DATE, dataset.TRAIN), tft_output)
    eval_set = dataset.load_eval_set(dataset.split_files(work, DATE, dataset.EVAL), tft_output)
    written = set(train_ids) | set(eval_set.listing_ids.tolist())
    assert written and written <= sampled  # nothing outside the sample was transformed
