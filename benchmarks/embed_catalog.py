"""The embed benchmark's photo sets: a generated catalog (day 1) and its 1% day (day 2), each
with a fresh workdir and the model to embed with installed there.

Day 2 is day 1 with 1% of the photos new or changed (half re-shot, half new listings). A catalog
too big to render is day 1's photos listed ``--replicate`` times under new listings (hard links).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import math
import os
import shutil
import time
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import paths, pointers, storage

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
CHANGE_FRACTION = 0.01


def _install_model(args: argparse.Namespace, workdir: str) -> tuple[str, str]:
    """Copy the chosen model into the bench workdir; returns (version, description)."""
    src = args.model_workdir
    if (
        src is None
        and not args.fake_model
        and pointers.read_pointer(paths.published_model_pointer("demo-output")).value
    ):
        src = "demo-output"
    if src is not None:
        version = args.model or pointers.read_pointer(paths.published_model_pointer(src)).value
        if not version:
            raise SystemExit(f"no --model and nothing published under {src}")
        shutil.copytree(paths.model_dir(src, version), paths.model_dir(workdir, version))
        storage.write_text(paths.published_model_pointer(workdir), version + "\n")
        from models import artifact

        config = artifact.read_config(workdir, version)
        return (
            version,
            f"exported model {version} ({config.backbone or '?'}, {config.image_size}px, D={config.embedding_dim})",
        )
    from benchmarks.fake_embedder import build_fake_model

    version = build_fake_model(workdir, dim=256, image_size=96)
    return (
        version,
        f"FAKE model (benchmarks/fake_embedder.py: decode, resize 96px, pool, project to D=256) {version}",
    )


def _make_day2(catalog: str, fraction: float, seed: int = 5) -> int:
    """Day 2 = day 1 with ``fraction`` of the images new or changed (half re-shot, half new listings)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    day1 = pq.read_table(storage.join(paths.catalog_day(catalog, D1), "listings.parquet"))
    rows = day1.to_pylist()
    n_images = sum(len(r["image_uris"]) for r in rows)
    target = max(2, math.ceil(fraction * n_images))

    def tweak(rel: str, new_rel: str) -> None:
        img = Image.open(io.BytesIO(storage.read_bytes(storage.join(catalog, rel)))).convert("RGB")
        a = np.asarray(img).copy()
        a[:8, :8] = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        storage.write_bytes(storage.join(catalog, new_rel), buf.getvalue())

    changed = 0
    order = rng.permutation(len(rows))
    k = 0
    while changed < target // 2:  # re-shoot the first photo of some listings
        r = rows[int(order[k])]
        k += 1
        new_rel = f"images/bench-day2/{r['listing_id']}-0.jpg"
        tweak(r["image_uris"][0], new_rel)
        r["image_uris"] = [new_rel, *r["image_uris"][1:]]
        changed += 1
    added = 0
    while changed + added < target:  # new one-photo listings
        src = rows[int(order[k])]
        k += 1
        new_rel = f"images/bench-day2/NEW{added:06d}-0.jpg"
        tweak(src["image_uris"][0], new_rel)
        rows.append({**src, "listing_id": f"NEW{added:06d}", "image_uris": [new_rel]})
        added += 1
    table = pa.Table.from_pylist(rows, schema=day1.schema)
    with storage.atomic_writer(
        storage.join(paths.catalog_day(catalog, D2), "listings.parquet")
    ) as f:
        pq.write_table(table, f)
    return changed + added


class Prepared(NamedTuple):
    """A benchmark catalog and its fresh workdir, with the model installed there."""

    catalog: str
    workdir: str
    images: int  # day 1's photos
    version: str
    model_desc: str


def prepare(base: str, images: int, seed: int, args: argparse.Namespace) -> Prepared:
    """A generated catalog (day 1, and day 2 with 1% changes) and a fresh workdir with the model
    under ``base``. With ``--keep-catalog`` an existing catalog there is reused and only the
    workdir is new."""
    catalog, workdir = os.path.join(base, "catalog"), os.path.join(base, "work")
    day2 = storage.join(paths.catalog_day(catalog, D2), "listings.parquet")
    keep = args.keep_catalog and storage.exists(day2)
    shutil.rmtree(workdir if keep else base, ignore_errors=True)
    version, model_desc = _install_model(args, workdir)
    from synthetic.generate import generate_catalog

    t0 = time.perf_counter()
    if keep:
        day1 = pq.read_table(storage.join(paths.catalog_day(catalog, D1), "listings.parquet"))
        n_images = _photo_count(day1)
        changes = "(reused catalog)"
    else:
        copies = max(1, args.replicate)
        source = catalog if copies == 1 else os.path.join(base, "source")
        # ~2.5 photos per generated listing; the report uses the real count.
        gen = generate_catalog(
            source,
            listings=max(1, round(images / copies / 2.5)),
            days=1,
            seed=seed,
            image_size=args.catalog_px,
            progress_every=0,
        )
        n_images = gen.days[0].images
        if copies > 1:
            n_images = _replicate(source, catalog, copies)
        changes = str(_make_day2(catalog, CHANGE_FRACTION))
    _set_checksums(catalog, args.catalog_checksums)
    print(
        f"catalog {catalog}: {n_images} images, day 2 changes {changes} "
        f"({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    return Prepared(catalog, workdir, n_images, version, model_desc)


def _set_checksums(catalog: str, on: bool) -> None:
    """Give both days' listings an ``image_checksums`` column (MD5 hex of each photo's bytes) or
    drop it, so that a kept catalog matches ``--catalog-checksums`` either way."""
    import hashlib

    memo: dict[str, str] = {}

    def md5(rel: str) -> str:
        if rel not in memo:
            memo[rel] = hashlib.md5(storage.read_bytes(storage.join(catalog, rel))).hexdigest()
        return memo[rel]

    for day in (D1, D2):
        uri = storage.join(paths.catalog_day(catalog, day), "listings.parquet")
        table = pq.read_table(uri)
        has = "image_checksums" in table.column_names
        if has == on:
            continue
        if on:
            sums = [[md5(u) for u in us] for us in table.column("image_uris").to_pylist()]
            table = table.append_column("image_checksums", pa.array(sums, pa.list_(pa.string())))
        else:
            table = table.drop_columns(["image_checksums"])
        with storage.atomic_writer(uri) as f:
            pq.write_table(table, f)


def _replicate(source: str, catalog: str, copies: int) -> int:
    """``catalog`` = ``source``'s day 1 ``copies`` times over, each copy under new listing ids and
    photo paths (hard links to the same JPEGs); returns its photo count.

    Generating photos is the slow part of a big catalog (~8 ms each here); a copy costs the embed
    job what a new photo costs (every URI is read, hashed, decoded and embedded, and listed on
    later days), so a large catalog can be measured without rendering it.
    """
    os.makedirs(paths.catalog_day(catalog, D1))
    shutil.copy(os.path.join(source, "catalog.json"), catalog)
    reviews = os.path.join(paths.catalog_day(source, D1), "reviews.parquet")
    if os.path.exists(reviews):  # the source's reviews, of its listings (the first copy)
        shutil.copy(reviews, paths.catalog_day(catalog, D1))
    day1 = pq.read_table(storage.join(paths.catalog_day(source, D1), "listings.parquet"))
    uris = day1.column("image_uris").to_pylist()
    parts = []
    for k in range(copies):
        folder = "images" if k == 0 else f"images-r{k}"
        new = [[folder + u[len("images") :] for u in us] for us in uris]
        for us, ns in zip(uris, new, strict=True):
            for u, n in zip(us, ns, strict=True):
                os.makedirs(os.path.dirname(os.path.join(catalog, n)), exist_ok=True)
                os.link(os.path.join(source, u), os.path.join(catalog, n))
        ids = day1["listing_id"]
        if k:
            ids = pc.binary_join_element_wise(ids, f"R{k}", "")
        copy = day1.set_column(0, day1.schema.field(0), ids)
        field = day1.schema.field("image_uris")
        parts.append(
            copy.set_column(
                copy.schema.get_field_index("image_uris"), field, pa.array(new, field.type)
            )
        )
    table = pa.concat_tables(parts)
    pq.write_table(table, storage.join(paths.catalog_day(catalog, D1), "listings.parquet"))
    return _photo_count(table)


def _photo_count(listings: pa.Table) -> int:
    """The photos of a listings table (the sum of its ``image_uris`` lengths)."""
    return int(pc.sum(pc.list_value_length(listings["image_uris"])).as_py() or 0)


def photo_bytes(catalog: str, limit: int) -> list[bytes]:
    """The bytes of day 1's first ``limit`` photos, in catalog order (what the job reads)."""
    from core import catalog as catalog_mod
    from core import snapshot

    snap = snapshot.read_snapshot(catalog, D1)
    blobs = []
    for listing in snap.listings:
        for ref in catalog_mod.listing_images(listing):
            blobs.append(storage.read_bytes(ref.uri))
            if len(blobs) >= limit:
                return blobs
    return blobs
