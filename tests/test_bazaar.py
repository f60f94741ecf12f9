"""The second catalog style: valid under the catalog contract, deterministic, and unlike the first."""

from __future__ import annotations

from pathlib import Path

from core import images
from core.snapshot import read_snapshot
from synthetic import bazaar, products
from tests.image_fixtures import tree_digest


def test_two_days_are_valid_snapshots_with_churn(tmp_path: Path) -> None:
    counts = bazaar.generate_bazaar_catalog(
        str(tmp_path), listings=80, days=2, seed=5, image_size=64
    )
    day1 = read_snapshot(str(tmp_path), "2026-01-01")
    day2 = read_snapshot(str(tmp_path), "2026-01-02")
    assert [len(day1.listings), len(day2.listings)] == counts
    assert not day1.rejected and not day2.rejected  # the contract holds for every row
    ids1 = {x.listing_id for x in day1.listings}
    ids2 = {x.listing_id for x in day2.listings}
    assert ids1 - ids2 and ids2 - ids1  # some removed, some added
    assert day1.reviews and all(r.listing_id in ids1 for r in day1.reviews)
    # Every photo decodes with the pipelines' safe decoder.
    for ref in day1.images()[:40]:
        images.decode_image(Path(ref.uri).read_bytes(), size=32)


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    bazaar.generate_bazaar_catalog(str(a), listings=25, days=1, seed=9, image_size=48)
    bazaar.generate_bazaar_catalog(str(b), listings=25, days=1, seed=9, image_size=48)
    assert tree_digest(a) == tree_digest(b)


def test_unlike_the_first_style(tmp_path: Path) -> None:
    bazaar.generate_bazaar_catalog(str(tmp_path), listings=300, days=1, seed=1, image_size=32)
    snap = read_snapshot(str(tmp_path), "2026-01-01")
    cats = [x.category for x in snap.listings]
    assert not set(cats) & {c for c, _ in products.CATEGORIES}  # another taxonomy
    assert not {x.color for x in snap.listings} & set(products.COLORS)  # another palette
    per_cat = sorted(cats.count(c) for c in set(cats))
    assert per_cat[0] * 4 < per_cat[-1]  # heavy-tailed: rare categories exist
    assert {len(x.image_uris) for x in snap.listings} >= {1, 6}
