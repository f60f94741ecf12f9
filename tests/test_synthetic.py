"""The generated catalog: contract, determinism, daily deltas, and photos a model can learn from."""

from __future__ import annotations

import colorsys
import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core import storage
from synthetic import generate, products, render, tables
from synthetic.spec import ProductSpec
from vsearch import cli

SIZE = 64
LISTINGS = 40  # enough that the day's work goes through the process pool (>= 32 tasks)
DAYS = 3
D1, D2 = "dt=2026-01-01", "dt=2026-01-02"


def _gen(out: Path, seed: int = 7, days: int = DAYS, **kw: Any) -> generate.GeneratedCatalog:
    return generate.generate_catalog(
        str(out), LISTINGS, days, seed, image_size=SIZE, progress_every=0, **kw
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("catalog")
    _gen(out)
    return out


def _listings(root: Path, day: str = D1) -> dict[str, dict]:
    return {r["listing_id"]: r for r in pq.read_table(root / day / "listings.parquet").to_pylist()}


def _reviews(root: Path, day: str = D1) -> list[dict]:
    return pq.read_table(root / day / "reviews.parquet").to_pylist()


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def test_same_seed_gives_identical_bytes_whatever_the_process_layout(
    catalog: Path, tmp_path: Path
) -> None:
    _gen(tmp_path / "again", workers=1)  # in-process rendering vs the fixture's 2-process pool
    assert _files(catalog) == _files(tmp_path / "again")


def test_another_seed_gives_another_catalog(catalog: Path, tmp_path: Path) -> None:
    _gen(tmp_path / "other", seed=8, days=1)
    a, b = _listings(catalog), _listings(tmp_path / "other")
    assert [r["category"] for r in a.values()] != [r["category"] for r in b.values()]
    assert not set(_files(catalog).values()) & set(_files(tmp_path / "other").values())


def test_schema_reads_back_as_the_contract(catalog: Path) -> None:
    listings = pq.read_table(catalog / D1 / "listings.parquet")
    assert listings.schema.equals(tables.LISTINGS_SCHEMA)
    assert listings.schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert listings.num_rows == LISTINGS
    rows = listings.to_pylist()
    assert len({r["listing_id"] for r in rows}) == LISTINGS
    assert all(1 <= len(r["image_uris"]) <= 5 for r in rows)
    assert all(r["category"] in {c for c, _ in products.CATEGORIES} for r in rows)
    assert all(r["updated_at"].date() == dt.date(2026, 1, 1) for r in rows)
    reviews = pq.read_table(catalog / D1 / "reviews.parquet")
    assert reviews.schema.equals(tables.REVIEWS_SCHEMA)
    assert set(reviews.column("listing_id").to_pylist()) <= {r["listing_id"] for r in rows}
    assert len(set(reviews.column("review_id").to_pylist())) == reviews.num_rows > 0
    # Most listings have 1-3 review photos, some none.
    per = [
        sum(1 for r in reviews.to_pylist() if r["listing_id"] == lid) for lid in _listings(catalog)
    ]
    assert 0 in per and max(per) <= 3 and sum(1 for n in per if n >= 1) > LISTINGS / 2


def test_every_image_decodes_at_the_requested_size_as_a_jpeg(catalog: Path) -> None:
    uris = [u for r in _listings(catalog).values() for u in r["image_uris"]]
    uris += [r["image_uri"] for r in _reviews(catalog)]
    for uri in uris:
        assert not os.path.isabs(uri) and uri.startswith("images/")
        with Image.open(catalog / uri) as img:
            assert img.format == "JPEG" and img.size == (SIZE, SIZE)
            img.load()


def test_some_attribute_labels_are_missing_as_in_real_catalogs(catalog: Path) -> None:
    rows = list(_listings(catalog).values())
    for column in ("color", "shape", "material"):
        nulls = sum(r[column] is None for r in rows)
        assert 0 < nulls < len(rows) / 3, column
    assert all(r["category"] and r["title"] for r in rows)


def test_later_days_add_change_and_remove_listings(catalog: Path) -> None:
    day1, day2 = _listings(catalog, D1), _listings(catalog, D2)
    added, removed = set(day2) - set(day1), set(day1) - set(day2)
    kept = set(day1) & set(day2)
    changed = {lid for lid in kept if day1[lid]["image_uris"] != day2[lid]["image_uris"]}
    assert added and removed and changed
    for lid in kept - changed:  # unchanged listings keep the very same files
        assert day2[lid] == day1[lid]
    for lid in changed:  # re-shot photos: new files, new bytes, a new updated_at
        assert not set(day2[lid]["image_uris"]) & set(day1[lid]["image_uris"])
        assert day2[lid]["updated_at"].date() == dt.date(2026, 1, 2)
        assert day2[lid]["category"] == day1[lid]["category"]
    for lid in removed:  # a removed listing's reviews leave with it
        assert lid not in {r["listing_id"] for r in _reviews(catalog, D2)}
    doc = json.loads((catalog / "catalog.json").read_text())
    assert doc["parameters"]["seed"] == 7 and len(doc["snapshots"]) == DAYS
    snap2 = doc["snapshots"][1]
    assert (snap2["added"], snap2["changed"], snap2["removed"]) == (
        len(added),
        len(changed),
        len(removed),
    )
    assert snap2["listings"] == len(day2)


def test_review_photos_differ_from_studio_photos_but_keep_the_colour(catalog: Path) -> None:
    listings = _listings(catalog)
    names = list(products.COLORS)
    base = np.array([colorsys.hsv_to_rgb(*products.COLORS[c]) for c in names]) * 255

    def centre_mean(a: np.ndarray) -> np.ndarray:
        lo, hi = int(SIZE * 0.3), int(SIZE * 0.7)
        return a[lo:hi, lo:hi].reshape(-1, 3).mean(axis=0)

    diffs, own_closer = [], []
    for review in _reviews(catalog):
        listing = listings[review["listing_id"]]
        photo = _rgb(catalog / review["image_uri"])
        diffs.append(np.abs(photo - _rgb(catalog / listing["image_uris"][0])).mean())
        if listing["color"] is not None:
            d = np.sqrt(((base - centre_mean(photo)) ** 2).sum(axis=1))
            i = names.index(listing["color"])
            own_closer.append(d[i] < np.median(np.delete(d, i)))
    # A buyer's photo is not a copy of the studio shot...
    assert min(diffs) > 15 and np.median(diffs) > 40
    # ...but its colour still says more about the listing's colour label than about others
    # (chance is 0.5; measured ~0.72 over several seeds).
    assert np.mean(own_closer) > 0.6, np.mean(own_closer)


def test_corrupt_fraction_writes_broken_listing_images(tmp_path: Path) -> None:
    result = _gen(tmp_path, days=1, corrupt_fraction=0.3)
    bad = 0
    for row in _listings(tmp_path).values():
        for uri in row["image_uris"]:
            try:
                with Image.open(io.BytesIO((tmp_path / uri).read_bytes())) as img:
                    img.load()
            except OSError:
                bad += 1
    assert bad == result.days[0].corrupt_images > 0


def test_cli_writes_a_catalog_and_explains_its_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--listings", "5", "--days", "2", "--seed", "3", "--image-size", "32"]
    assert cli.main(["generate-catalog", *args, "--start-date", "2026-03-01", str(tmp_path)]) == 0
    assert "generate-catalog: 2 day(s) 2026-03-01..2026-03-02" in capsys.readouterr().out
    assert (tmp_path / "dt=2026-03-02" / "listings.parquet").exists()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate-catalog", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--listings",
        "--days",
        "--seed",
        "--start-date",
        "--image-size",
        "--corrupt-fraction",
    ):
        assert flag in help_text
    assert cli.main(["generate-catalog", *args, "--image-size", "4", str(tmp_path / "x")]) == 1
    assert "--image-size must be" in capsys.readouterr().err


def test_writes_to_gcs(gcs_bucket: str, tmp_path: Path) -> None:
    out = f"{gcs_bucket}/catalog"
    result = generate.generate_catalog(out, 4, 2, seed=3, image_size=32, progress_every=0)
    local = generate.generate_catalog(str(tmp_path), 4, 2, seed=3, image_size=32, progress_every=0)
    assert result.days == local.days
    table = pq.read_table(storage.open_read(f"{out}/{D2}/listings.parquet"))
    assert table.equals(pq.read_table(tmp_path / D2 / "listings.parquet"))
    uri = table.column("image_uris").to_pylist()[0][0]
    assert storage.read_bytes(f"{out}/{uri}") == (tmp_path / uri).read_bytes()
    assert json.loads(storage.read_text(f"{out}/catalog.json"))["parameters"]["listings"] == 4


def test_some_listings_sell_another_listings_product_again() -> None:
    # "Also available in blue" and near-duplicate listings: the hardest negatives for retrieval.
    specs = [render.listing_meta(7, n).spec for n in range(300)]
    by_shape: dict[tuple, list[ProductSpec]] = {}
    for s in specs:
        by_shape.setdefault((s.category, s.material, s.shape, s.variant, s.gloss), []).append(s)
    groups = [g for g in by_shape.values() if len(g) > 1]
    assert any(len({s.color for s in g}) > 1 for g in groups)  # recoloured
    assert any(len({s.color for s in g}) < len(g) for g in groups)  # near-duplicates
    assert all(len({s.rgb for s in g}) == len(g) for g in groups)  # yet every listing is unique


def test_every_buyer_photo_has_its_true_product_box(catalog: Path) -> None:
    from core.snapshot import read_snapshot
    from synthetic import photos, truth

    boxes = truth.read_review_boxes(str(catalog))
    last = read_snapshot(str(catalog), "2026-01-03")
    assert {r.image_uri.removeprefix(str(catalog) + "/") for r in last.reviews} <= set(boxes)
    # The box is where the product is: the same photo drawn with and without it differs there.
    for k in range(10):
        shots = []
        for alpha in (255, 0):
            px = np.zeros((64, 64, 4), np.uint8)
            px[8:-8, 8:-8] = (255, 0, 255, alpha)
            layer = Image.fromarray(px, "RGBa")
            shots.append(photos.review_photo(layer, 96, np.random.default_rng([3, k])))
        (with_item, _, box), (without, _, _) = shots
        a = np.asarray(Image.open(io.BytesIO(with_item)), np.float32)
        b = np.asarray(Image.open(io.BytesIO(without)), np.float32)
        ys, xs = np.nonzero(np.abs(a - b).sum(axis=-1) > 90)
        inside = (xs >= box[0] * 96 - 2) & (xs <= box[2] * 96 + 2)
        inside &= (ys >= box[1] * 96 - 2) & (ys <= box[3] * 96 + 2)
        assert len(xs) > 30 and inside.mean() > 0.95, f"photo {k}: product outside its box"
