"""The promotion gate: the rule on its own, and a real model trained on shuffled labels is refused."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.gate import GateSettings
from pipelines.gate_rules import decide

GOOD = {
    "review_recall_at_10": 0.70,
    "review_recall_at_1": 0.30,
    "category_precision_at_10": 0.92,
    "color_precision_at_10": 0.60,
    "category_accuracy": 0.90,
}


def _settings(**kw) -> GateSettings:
    return GateSettings(workdir="unused", candidate="v2", **kw)


BASELINES = {
    "colour histogram": {"review_recall_at_10": 0.30, "category_precision_at_10": 0.40},
    "untrained network": {"review_recall_at_10": 0.10, "category_precision_at_10": 0.55},
}


def test_first_model_must_clearly_beat_the_same_run_baselines() -> None:
    ok, reasons = decide(GOOD, None, _settings(), BASELINES, queries=500)
    assert ok and "first model" in reasons[0] and reasons[-1].startswith("next: embed --full")
    # Category precision 0.58 is above every baseline but not by the margin over the best (0.55).
    weak = {**GOOD, "category_precision_at_10": 0.58}
    ok, reasons = decide(weak, None, _settings(), BASELINES, queries=500)
    assert not ok
    assert reasons[2] == (
        "listing -> same-category listings: precision@10 0.580 is at the untrained network's "
        "level (0.550; needs >= 0.600)"
    )
    assert reasons[-1].startswith("next: the model has not learnt listing -> same-category")
    # No absolute floor tuned to one catalog: a catalog where everything scores low still
    # promotes a model that clearly beats what learns nothing there.
    low = {k: v / 3 for k, v in BASELINES["colour histogram"].items()}
    hard_catalog = {"review_recall_at_10": 0.25, "category_precision_at_10": 0.30}
    assert decide(hard_catalog, None, _settings(), {"colour histogram": low}, 500)[0]


def test_a_first_model_is_told_which_capability_is_at_a_baselines_level() -> None:
    # Buyer photos find their listing no better than a colour histogram; categories are learnt.
    baselines = {
        "colour histogram": {"review_recall_at_10": 0.037, "category_precision_at_10": 0.41},
        "untrained network": {"review_recall_at_10": 0.010, "category_precision_at_10": 0.30},
    }
    candidate = {"review_recall_at_10": 0.041, "category_precision_at_10": 0.79}
    ok, reasons = decide(candidate, None, _settings(), baselines, queries=500)
    assert not ok
    assert reasons[1:3] == [
        "buyer photo -> its listing: recall@10 0.041 is at the colour histogram's level "
        "(0.037; needs >= 0.087)",
        "listing -> same-category listings is fine: precision@10 0.790 vs best baseline 0.410 "
        "(colour histogram; needs >= 0.460)",
    ]
    # What to do next is about buyer photos only.
    assert reasons[-1].startswith("next: the model has not learnt buyer photo -> its listing")
    assert "train longer" in reasons[-1] and "more buyer photos" in reasons[-1]
    assert "category" not in reasons[-1]


def test_a_first_model_failing_both_capabilities_names_both() -> None:
    # Buyer photos: worse than a network that learnt nothing. Categories: level with it.
    candidate = {"review_recall_at_10": 0.02, "category_precision_at_10": 0.52}
    ok, reasons = decide(candidate, None, _settings(), BASELINES, queries=500)
    assert not ok
    assert reasons[1:3] == [
        "buyer photo -> its listing: recall@10 0.020 is below the untrained network's level "
        "(0.100; needs >= 0.350 to clear the colour histogram's 0.300)",
        "listing -> same-category listings: precision@10 0.520 is at the untrained network's "
        "level (0.550; needs >= 0.600)",
    ]
    assert reasons[-1].startswith(
        "next: the model has learnt neither buyer photo -> its listing "
        "nor listing -> same-category listings"
    )
    assert "more buyer photos" in reasons[-1] and "category labels" in reasons[-1]


def test_a_first_model_passing_both_capabilities_says_so() -> None:
    ok, reasons = decide(GOOD, None, _settings(), BASELINES, queries=500)
    assert ok
    assert reasons[1:3] == [
        "buyer photo -> its listing is fine: recall@10 0.700 vs best baseline 0.300 "
        "(colour histogram; needs >= 0.350)",
        "listing -> same-category listings is fine: precision@10 0.920 vs best baseline 0.550 "
        "(untrained network; needs >= 0.600)",
    ]
    assert reasons[-1] == "next: embed --full with the new model, then build-index and publish"


def test_the_wording_leaves_the_promotion_rule_as_it_was() -> None:
    """Still: every baseline metric >= its best baseline + required_gain, nothing more."""
    from models.baselines import required_gain
    from models.capabilities import BASELINE_METRICS

    rng = np.random.default_rng(0)
    for _ in range(300):
        hist, untrained, cand = (
            dict(zip(BASELINE_METRICS, rng.random(2), strict=True)) for _ in "abc"
        )
        queries = int(rng.integers(1, 2000))
        best = {m: max(hist[m], untrained[m]) for m in BASELINE_METRICS}
        rule = all(cand[m] >= best[m] + required_gain(best[m], queries, 0.05) for m in best)
        baselines = {"colour histogram": hist, "untrained network": untrained}
        assert decide(cand, None, _settings(), baselines, queries)[0] == rule


def test_a_small_eval_set_needs_a_larger_gain() -> None:
    close = {**GOOD, "review_recall_at_10": 0.36, "category_precision_at_10": 0.70}
    assert decide(close, None, _settings(), BASELINES, queries=5000)[0]
    assert not decide(close, None, _settings(), BASELINES, queries=40)[0]  # 2 s.e. of 0.30 > 0.06


def test_user_floors_add_a_check_and_replace_nothing() -> None:
    floors = (("category_accuracy", 0.95),)
    ok, reasons = decide(GOOD, None, _settings(floors=floors), BASELINES, queries=500)
    assert not ok and any("category_accuracy 0.9000 < floor 0.9500" in r for r in reasons)
    assert any(r.startswith("buyer photo -> its listing is fine") for r in reasons)  # still applied
    ok, reasons = decide(GOOD, GOOD, _settings(floors=floors))
    assert not ok and any("< floor" in r for r in reasons)  # later models too


def test_recall_must_beat_published_by_the_margin() -> None:
    better = {**GOOD, "review_recall_at_10": 0.75}
    assert decide(better, GOOD, _settings(margin=0.02))[0]
    ok, reasons = decide(better, GOOD, _settings(margin=0.1))
    assert not ok and reasons[0].startswith("buyer photo -> its listing: review_recall_at_10")
    assert "gain +0.0500 < margin 0.1000" in reasons[0]


def test_no_other_metric_may_drop_more_than_the_tolerance() -> None:
    better_recall_worse_category = {
        **GOOD,
        "review_recall_at_10": 0.8,
        "category_precision_at_10": 0.85,
    }
    ok, reasons = decide(better_recall_worse_category, GOOD, _settings(tolerance=0.02))
    dropped = "listing -> same-category listings: category_precision_at_10 dropped 0.0700"
    assert not ok and any(r.startswith(dropped) for r in reasons)
    assert decide(better_recall_worse_category, GOOD, _settings(tolerance=0.1))[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gate_refuses_a_model_trained_on_shuffled_labels(tmp_path) -> None:
    """Train a real model, publish it, then really train one on shuffled labels: refused, pointer kept."""
    tf = pytest.importorskip("tensorflow")
    import apache_beam as beam

    from core import catalog, images, paths, pointers, snapshot, storage
    from models import features as F
    from models.config import TrainConfig
    from pipelines import gate
    from pipelines.preprocess import PreprocessSettings
    from pipelines.preprocess_job import _labels, transform_and_write
    from pipelines.train import run as train
    from synthetic.generate import generate_catalog

    del tf
    size, work, cat = 32, str(tmp_path / "work"), str(tmp_path / "cat")
    generate_catalog(cat, listings=200, days=1, seed=11, image_size=48)
    snap = snapshot.read_snapshot(cat, "2026-01-01")
    labels = {listing.listing_id: _labels(listing) for listing in snap.listings}
    refs = [r for listing in snap.listings for r in catalog.listing_images(listing)] + [
        catalog.review_image(r) for r in snap.reviews
    ]
    rows = [
        {
            F.IMAGE_KEY: images.decode_image(storage.read_bytes(ref.uri), size),
            F.LISTING_ID_KEY: ref.listing_id.encode(),
            F.KIND_KEY: ref.kind.encode(),
            **labels[ref.listing_id],
        }
        for ref in refs
    ]
    is_eval = [catalog.is_eval_listing(r[F.LISTING_ID_KEY].decode(), 0.4) for r in rows]
    train_rows = [r for r, e in zip(rows, is_eval, strict=True) if not e]
    eval_rows = [r for r, e in zip(rows, is_eval, strict=True) if e]
    # Shuffled: every train row gets another row's labels and listing id (every head learns noise);
    # the eval rows keep their true labels so both models are judged on the same truth.
    perm = np.random.default_rng(0).permutation(len(train_rows))
    label_keys = (*F.LABEL_KEYS, F.LISTING_ID_KEY)
    shuffled = [
        {**r, **{k: train_rows[j][k] for k in label_keys}}
        for r, j in zip(train_rows, perm, strict=True)
    ]
    for date, data in (("2026-01-01", train_rows), ("2026-01-02", shuffled)):
        settings = PreprocessSettings(
            catalog=cat, date=date, workdir=work, image_size=size, min_class_count=2
        )
        with beam.Pipeline() as p:
            transform_and_write(
                p | "Train" >> beam.Create(data), p | "Eval" >> beam.Create(eval_rows), settings
            )

    # No augmentation and 20 short epochs: at 12 the real model's whole-catalog review recall@10
    # sat within 0.01 of the bar (colour histogram + 2 s.e. of 113 queries) on one CPU and under it
    # on another; at 20 it clears the bar by ~0.1.
    common = {
        "workdir": work,
        "image_size": size,
        "embedding_dim": 32,
        "epochs": 20,
        # All 20: with early stopping on, a 113-query recall curve (noisy: 0.18, 0.14, 0.12, 0.15,
        # 0.16 at epochs 7-11) stopped the real model at epoch 11, under the bar (CI, and a
        # local run on 2026-11-22).
        "early_stopping_patience": 0,
        "batch_size": 32,
        "augment": False,
        "localiser_steps": 0,  # the gate judges the embedding; the localiser is tested apart
    }
    real = train(TrainConfig(date="2026-01-01", **common))
    # Judged with the defaults: against the same-run baselines, measured on the same images.
    first = gate.run(GateSettings(work, real.version))
    assert first.promoted, first.reasons
    assert set(first.baseline_metrics) == {"colour histogram", "untrained network"}

    # Shuffled labels have nothing to learn: 6 epochs of them are as bad as 20, at a third of
    # the test's time.
    noise = train(TrainConfig(date="2026-01-02", **{**common, "epochs": 6}))
    decision = gate.run(GateSettings(work, noise.version))
    assert not decision.promoted, decision
    assert decision.published == real.version
    assert pointers.read_pointer(paths.published_model_pointer(work)).value == real.version
    # The reasons name what got worse, measured on the same eval images for both models.
    assert any("dropped" in r or "< margin" in r for r in decision.reasons)
    assert (
        decision.candidate_metrics["category_accuracy"]
        < decision.published_metrics["category_accuracy"]
    )
