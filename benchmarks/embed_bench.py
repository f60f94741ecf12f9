"""Embed job benchmarks (BENCHMARKS.md section ``embed``).

(a) Pipeline efficiency: the embed job's images/s divided by raw batched ``model(...)`` images/s
    on the same images (the sanitised PNGs the job feeds the model), same machine, same batch size
    (the job runs with min = max batch size). Target >= 0.8.
(b) Incremental cost: a day with 1% new or changed images, as a fraction of the full run's wall
    time (both end to end: `embed.run` from the call to its return). Target <= 5% at >= 20,000
    images.

Then a cProfile of the incremental run (top functions by cumulative and own time).

    python -m benchmarks.embed_bench [--images 20000] [--batch-size 32] [--model-workdir W]
    [--model VERSION] [--out bench-output/embed] [--no-write]

Without ``--model-workdir`` it uses ``demo-output`` if a model is published there, else the small
fake of tests/fake_embedder.py (and says so in the report).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import math
import os
import pstats
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vsearch import paths, storage

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
CHANGE_FRACTION = 0.01


@dataclass(frozen=True)
class Timings:
    images: int
    full_wall_s: float
    full_embedded: int
    inc_wall_s: float
    inc_embedded: int
    inc_skipped: int
    raw_images_per_s: float
    batch_size: int
    model: str


def _install_model(args: argparse.Namespace, workdir: str) -> tuple[str, str]:
    """Copy the chosen model into the bench workdir; returns (version, description)."""
    src = args.model_workdir
    if src is None and storage.read_pointer(paths.published_model_pointer("demo-output")).value:
        src = "demo-output"
    if src is not None:
        version = args.model or storage.read_pointer(paths.published_model_pointer(src)).value
        if not version:
            raise SystemExit(f"no --model and nothing published under {src}")
        shutil.copytree(paths.model_dir(src, version), paths.model_dir(workdir, version))
        storage.write_text(paths.published_model_pointer(workdir), version + "\n")
        config = json.loads(
            storage.read_text(storage.join(paths.model_dir(workdir, version), "config.json"))
        )
        return (
            version,
            f"exported model {version} ({config.get('backbone', '?')}, {config['image_size']}px, D={config['embedding_dim']})",
        )
    from tests.fake_embedder import build_fake_model

    version = build_fake_model(workdir, dim=256, image_size=96)
    return (
        version,
        f"FAKE model (tests/fake_embedder.py: decode, resize 96px, pool, project to D=256) {version}",
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


def _raw_model_rate(
    workdir: str, version: str, catalog: str, batch_size: int, image_size: int
) -> float:
    """images/s of batched signature calls on the PNGs the job would feed, load excluded."""
    from transforms.inference import EmbedderModelHandler
    from vsearch import catalog as catalog_mod
    from vsearch import images

    snap = catalog_mod.read_snapshot(catalog, D1)
    refs = [ref for listing in snap.listings for ref in catalog_mod.listing_images(listing)]
    pngs = []
    for ref in refs:
        try:
            pngs.append(
                images.encode_png(images.decode_image(storage.read_bytes(ref.uri), image_size))
            )
        except images.ImageError:
            continue
    handler = EmbedderModelHandler(paths.embedder_dir(workdir, version))
    model = handler.load_model()
    from transforms.inference import _predict

    list(_predict(model, pngs[:batch_size]))  # warm-up: tracing and first allocations
    start = time.perf_counter()
    for i in range(0, len(pngs), batch_size):
        list(_predict(model, pngs[i : i + batch_size]))
    return len(pngs) / (time.perf_counter() - start)


def _run(catalog: str, workdir: str, date: dt.date, batch_size: int, profile: str | None = None):
    from pipelines import embed

    settings = embed.EmbedSettings(
        catalog=catalog,
        date=date,
        workdir=workdir,
        min_batch_size=batch_size,
        max_batch_size=batch_size,
    )
    start = time.perf_counter()
    if profile:
        prof = cProfile.Profile()
        summary = prof.runcall(embed.run, settings, ["--direct_num_workers=1"])
        prof.dump_stats(profile)
    else:
        summary = embed.run(settings, ["--direct_num_workers=1"])
    return summary, time.perf_counter() - start


def _top(profile: str, key: str, n: int = 12) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats(key).print_stats(n)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start : start + n + 1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="embed_bench")
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model-workdir", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="bench-output/embed")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    catalog, workdir = os.path.join(out, "catalog"), os.path.join(out, "work")
    version, model_desc = _install_model(args, workdir)
    image_size = int(
        json.loads(
            storage.read_text(storage.join(paths.model_dir(workdir, version), "config.json"))
        )["image_size"]
    )

    from vsearch.synthetic.generate import generate_catalog

    t0 = time.perf_counter()
    # ~2.5 photos per generated listing; adjust after generation with the real count.
    gen = generate_catalog(
        catalog,
        listings=max(1, round(args.images / 2.5)),
        days=1,
        seed=1,
        image_size=128,
        progress_every=0,
    )
    n_images = gen.days[0].images
    n_changed = _make_day2(catalog, CHANGE_FRACTION)
    print(
        f"catalog: {n_images} images, day 2 changes {n_changed} ({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )

    full, full_wall = _run(catalog, workdir, D1, args.batch_size)
    inc, inc_wall = _run(catalog, workdir, D2, args.batch_size)
    raw = _raw_model_rate(workdir, version, catalog, args.batch_size, image_size)
    prof_path = os.path.join(out, "incremental.prof")
    _run(catalog, workdir, D2, args.batch_size, profile=prof_path)  # idempotent re-run, profiled

    t = Timings(
        n_images,
        full_wall,
        full.ok,
        inc_wall,
        inc.ok,
        inc.skipped,
        raw,
        args.batch_size,
        model_desc,
    )
    body = report(
        t, _top(prof_path, "cumulative"), _top(prof_path, "tottime"), full.extra, inc.extra
    )
    print(body, flush=True)
    if not args.no_write:
        from benchmarks.report import write_section

        write_section("embed", body)
    return 0


def report(t: Timings, top_cum: str, top_own: str, full_extra: dict, inc_extra: dict) -> str:
    job_rate = t.full_embedded / t.full_wall_s
    marginal = (t.full_embedded - t.inc_embedded) / max(t.full_wall_s - t.inc_wall_s, 1e-9)
    ratio_a, ratio_b = job_rate / t.raw_images_per_s, t.inc_wall_s / t.full_wall_s
    ok = lambda good: "meets target" if good else "MISSES target"  # noqa: E731
    return f"""## Embed job (`benchmarks/embed_bench.py`)

Model: {t.model}. {t.images} listing images (generated catalog, 128 px JPEG), DirectRunner
in-memory, 1 worker, batch size {t.batch_size} (min = max), `nice`d on a shared machine.

| measure | value |
|---|---|
| (a) raw batched `model(...)` on the same PNGs | {t.raw_images_per_s:.1f} images/s |
| (a) embed job, end to end (startup, model load, catalog read, write included) | {job_rate:.1f} images/s ({t.full_embedded} in {t.full_wall_s:.1f} s) |
| (a) **job / raw** (target >= 0.8) | **{ratio_a:.2f}** ({ok(ratio_a >= 0.8)}) |
| (a) job / raw, marginal (fixed costs removed: full minus incremental run) | {marginal / t.raw_images_per_s:.2f} |
| (b) full run wall | {t.full_wall_s:.1f} s |
| (b) 1% day: {t.inc_embedded} embedded, {t.inc_skipped} skipped unchanged | {t.inc_wall_s:.1f} s |
| (b) **1% day / full run** (target <= 0.05) | **{ratio_b:.3f}** ({ok(ratio_b <= 0.05)}) |
| batch sizes seen by the model (full run) | {full_extra.get("batch_size", {})} |
| inference ms per batch (full run) | {full_extra.get("inference_ms", {})} |

Profile of the incremental run (cProfile, main thread; TensorFlow's own threads are inside the
signature call):

```
{top_cum}
```

Own time:

```
{top_own}
```
"""


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
