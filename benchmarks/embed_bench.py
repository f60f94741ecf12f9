"""Embed job benchmarks (BENCHMARKS.md section ``embed``).

(a) Pipeline efficiency against this machine's CPU ceiling, all on the same photos in one run:
    the safe decode alone (a process per core), the model alone (batched pixel-signature calls on
    the decoded pixels, one caller and two), the ceiling they imply when they share the cores,
    1 / (1/decode + 1/model), and the embed job's full run end to end. Decode and model are
    measured ``--p1-rounds`` times, half before the full run and half after it (medians), on
    ``--p1-sample`` photos; the job runs with min = max batch size. Target: job / ceiling >= 0.9.
(b) Incremental cost: a day with 1% new or changed images, as a fraction of the full run's wall
    time (both end to end: `python -m vsearch embed` in a fresh process, fixed costs included).
    Target <= 2% at >= 100,000 images. Unchanged photos are recognised from metadata alone (a
    catalog checksum, one stat of a local file or a listing of a gs:// prefix; see
    core/objectmeta.py), so the report also prints the cost per unchanged image and how
    many photos the 1% day read. The 1% day runs ``--rounds`` times (medians), interleaved with the
    same day on a second, smaller catalog (``--small-images``): the two sizes separate the fixed
    cost of a run (start-up, model load, pipeline set-up) from the cost per catalog photo, so the
    report can say what the ratio tends to as the catalog grows and at what size it would reach 2%.
    ``--replicate K`` lists each generated photo K times under new listings (hard links), for
    catalogs too big to render.

Then a cProfile of the incremental run (top functions by cumulative and own time).
``--p1-only``: (a) alone (one catalog, its full run, no 1% days, no profile).

    python -m benchmarks.embed_bench [--images 20000] [--batch-size 32] [--model-workdir W]
    [--model VERSION] [--out bench-output/embed] [--no-write]

Without ``--model-workdir`` it uses ``demo-output`` if a model is published there, else the small
fake of benchmarks/fake_embedder.py (and says so in the report).
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
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import paths, pointers, storage

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


@dataclass(frozen=True)
class Scale:
    """One catalog size's end-to-end walls: the full run and each 1% day run, in run order."""

    images: int
    full_wall_s: float
    inc_walls_s: list[float]

    @property
    def inc_median_s(self) -> float:
        return float(np.median(self.inc_walls_s))


@dataclass(frozen=True)
class Fit:
    """wall = fixed + per_image * images, through two catalog sizes, for both kinds of run."""

    full_fixed_s: float
    full_per_image_ms: float
    inc_fixed_s: float
    inc_per_image_ms: float

    @property
    def usable(self) -> bool:
        """Both lines rise with the catalog; on tiny, noisy catalogs a slope can come out <= 0,
        and then the limit and the 2% size mean nothing."""
        return self.full_per_image_ms > 0 and self.inc_per_image_ms > 0

    @property
    def ratio_limit(self) -> float:
        """1% day / full run as the catalog grows without bound (the fixed parts fade)."""
        return self.inc_per_image_ms / self.full_per_image_ms

    @property
    def per_unchanged_ms(self) -> float:
        """The 1% day's cost per catalog photo, less its 1% of photos embedded at full cost."""
        changed = CHANGE_FRACTION * self.full_per_image_ms
        return (self.inc_per_image_ms - changed) / (1 - CHANGE_FRACTION)

    def images_for(self, target: float) -> float | None:
        """The catalog size whose 1% day costs ``target`` of its full run (None: no size does)."""
        slack = target * self.full_per_image_ms - self.inc_per_image_ms
        if slack <= 0:
            return None
        return max(0.0, 1000 * (self.inc_fixed_s - target * self.full_fixed_s) / slack)


def fit(small: Scale, big: Scale) -> Fit:
    """The straight line through the two sizes (full runs: single; 1% days: medians)."""
    dn = big.images - small.images
    if dn <= 0:
        raise ValueError(f"need two catalog sizes, got {small.images} and {big.images} images")
    full = (big.full_wall_s - small.full_wall_s) / dn
    inc = (big.inc_median_s - small.inc_median_s) / dn
    return Fit(
        big.full_wall_s - full * big.images,
        1000 * full,
        big.inc_median_s - inc * big.images,
        1000 * inc,
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


def _prepare(base: str, images: int, seed: int, args: argparse.Namespace) -> Prepared:
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


def _photo_bytes(catalog: str, limit: int) -> list[bytes]:
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


DECODE_CHUNK = 128  # photos per task sent to a decode process: ~0.7 MB of JPEG, ~0.1 s of work


def _decode_chunk(chunk: list[bytes], size: int, keep: bool) -> list[np.ndarray] | int:
    """The safe decode of each photo (in a pool process); the pixels, or only how many decoded."""
    from core import images

    out = []
    for data in chunk:
        try:
            out.append(images.decode_image(data, size))
        except images.ImageError:
            continue
    return out if keep else len(out)


def _decode_pool(workers: int) -> Any:
    """A pool of fresh processes (``spawn``: no TensorFlow threads inherited), warmed up."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    list(pool.map(_decode_chunk, [[]] * workers, [8] * workers, [False] * workers))
    return pool


def _decode_rate(pool: Any, blobs: list[bytes], size: int, workers: int) -> float:
    """images/s of the safe decode alone (``core.images.decode_image``, what the job's
    DecodeImages runs) on ``workers`` processes; the bytes are already in memory, only counts
    come back."""
    chunks = [blobs[i : i + DECODE_CHUNK] for i in range(0, len(blobs), DECODE_CHUNK)]
    start = time.perf_counter()
    done = sum(pool.map(_decode_chunk, chunks, [size] * len(chunks), [False] * len(chunks)))
    return done / (time.perf_counter() - start)


def _decoded_pixels(pool: Any, blobs: list[bytes], size: int) -> list[np.ndarray]:
    """The exact model inputs of the job for these photos (untimed)."""
    chunks = [blobs[i : i + DECODE_CHUNK] for i in range(0, len(blobs), DECODE_CHUNK)]
    return [
        a
        for out in pool.map(_decode_chunk, chunks, [size] * len(chunks), [True] * len(chunks))
        for a in out
    ]


def _raw_rates(model: Any, pixels: list[np.ndarray], batch_size: int) -> tuple[float, float]:
    """images/s of batched pixel-signature calls (load excluded): one caller (TensorFlow's own
    threads on every core), and two concurrent callers."""
    from concurrent.futures import ThreadPoolExecutor

    from transforms.inference import _predict

    batches = [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
    list(_predict(model, batches[0]))  # warm-up: tracing and first allocations
    start = time.perf_counter()
    for b in batches:
        list(_predict(model, b))
    one = len(pixels) / (time.perf_counter() - start)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda b: list(_predict(model, b)), batches))
    two = len(pixels) / (time.perf_counter() - start)
    return one, two


class _Ceiling:
    """The decode alone and the model alone on the same photos, in rounds around the full run.

    Both run on every core: the decode on a pool of one process per core, the model through
    TensorFlow's own threads (one caller) and with two concurrent callers (the better counts).
    """

    def __init__(
        self, model_uri: str, image_size: int, args: argparse.Namespace, catalog: str
    ) -> None:
        from transforms.inference import EmbedderModelHandler

        self.workers = os.cpu_count() or 1
        self.size, self.batch_size = image_size, args.batch_size
        self.blobs = _photo_bytes(catalog, args.p1_sample)
        self.pool = _decode_pool(self.workers)
        self.pixels = _decoded_pixels(self.pool, self.blobs, image_size)
        self.model = EmbedderModelHandler(model_uri).load_model()
        self.decode: list[float] = []
        self.one: list[float] = []
        self.two: list[float] = []

    def measure(self, rounds: int) -> None:
        for _ in range(rounds):
            self.decode.append(_decode_rate(self.pool, self.blobs, self.size, self.workers))
            one, two = _raw_rates(self.model, self.pixels, self.batch_size)
            self.one.append(one)
            self.two.append(two)
            print(
                f"decode alone {self.decode[-1]:.0f}/s, model alone {one:.0f}/s (1 caller) "
                f"{two:.0f}/s (2 callers)",
                flush=True,
            )

    def close(self) -> dict[str, Any]:
        self.pool.shutdown()
        return {
            "workers": self.workers,
            "photos": len(self.blobs),
            "decoded": len(self.pixels),
            "decode": self.decode,
            "model_one": self.one,
            "model_two": self.two,
            "model": [max(a, b) for a, b in zip(self.one, self.two, strict=True)],
        }


def ceiling_rate(decode: float, model: float) -> float:
    """images/s when decode and model share the same cores, each at its all-core rate: their
    CPU seconds per photo add up."""
    return 1.0 / (1.0 / decode + 1.0 / model)


def _job_env() -> dict[str, str]:
    """The job's environment with Python's bytecode cache on (in a private folder).

    Installed packages ship with (or write) .pyc files; a machine that sets
    PYTHONDONTWRITEBYTECODE instead compiles TensorFlow and Beam from source in every process
    (~8-10 s here), a cost a real deployment does not pay and that would swamp the 1% day.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.abspath(os.path.join("bench-output", "pycache"))
    return env


def _warm_imports() -> float:
    """Fill the bytecode cache once, before any timed run; returns the seconds it took."""
    start = time.perf_counter()
    code = (
        "import tensorflow, apache_beam, pyarrow.parquet, pipelines.embed, transforms.read_catalog"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_job_env(), capture_output=True)
    return time.perf_counter() - start


def _run(
    catalog: str, workdir: str, date: dt.date, batch_size: int, beam_args: list[str]
) -> tuple[dict[str, Any], float]:
    """One `vsearch embed` in a fresh process, as the daily job runs; (run summary, wall s)."""
    cmd = [
        sys.executable,
        "-m",
        "vsearch",
        "embed",
        "--catalog",
        catalog,
        "--date",
        date.isoformat(),
        "--workdir",
        workdir,
        "--min-batch-size",
        str(batch_size),
        "--max-batch-size",
        str(batch_size),
        *beam_args,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_job_env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"embed failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    from core import runs

    return runs.read_summary(workdir, "embed", date), wall


def _profile_run(catalog: str, workdir: str, date: dt.date, batch_size: int, out: str) -> float:
    """The same run in this process under cProfile, single-threaded so that it sees every step.

    Imports happen before profiling: the profile shows the run, not the interpreter warming up.
    """
    import tensorflow  # noqa: F401

    from pipelines import embed
    from transforms import read_catalog  # noqa: F401

    settings = embed.EmbedSettings(
        catalog=catalog,
        date=date,
        workdir=workdir,
        min_batch_size=batch_size,
        max_batch_size=batch_size,
    )
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.runcall(embed.run, settings, ["--direct_num_workers=1"])
    wall = time.perf_counter() - start
    prof.dump_stats(out)
    return wall


def _top(profile: str, key: str, n: int = 15) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats(key).print_stats(n)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(
        ln.replace(os.getcwd() + "/", "").replace(sys.prefix + "/", "")
        for ln in lines[start : start + n + 1]
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="embed_bench")
    ap.add_argument("--images", type=int, default=20_000)
    # The job's default largest batch (EmbedSettings.max_batch_size), fixed in the bench (min = max).
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model-workdir", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--beam-args", default="", help="Beam flags for the job (default: embed's)")
    ap.add_argument("--out", default="bench-output/embed")
    ap.add_argument("--catalog-px", type=int, default=128, help="generated photo size")
    ap.add_argument("--fake-model", action="store_true", help="benchmarks/fake_embedder.py's model")
    ap.add_argument(
        "--p2-only", action="store_true", help="skip the raw-model rates (P1) and the profile"
    )
    ap.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    ap.add_argument(
        "--keep-catalog",
        action="store_true",
        help="reuse OUT/catalog from an earlier run of the same --images (generating 100k takes ~15 min)",
    )
    ap.add_argument(
        "--report-only", action="store_true", help="re-render from OUT/results.json, run nothing"
    )
    ap.add_argument(
        "--small-images",
        type=int,
        default=None,
        help="a second catalog of this size (default: --images / 4; 0: none) whose 1%% day runs "
        "beside the first, to separate a run's fixed cost from its cost per photo",
    )
    ap.add_argument(
        "--replicate",
        type=int,
        default=1,
        help="generate --images / K distinct photos and list each K times under new listings "
        "(hard links): a big catalog without the ~8 ms per photo of rendering it",
    )
    ap.add_argument("--rounds", type=int, default=5, help="1%% day runs per size (medians)")
    ap.add_argument(
        "--p1-only",
        action="store_true",
        help="the CPU ceiling and the full run only: no second catalog, no 1%% days, no profile",
    )
    ap.add_argument(
        "--p1-sample",
        type=int,
        default=16_384,
        help="photos (day 1's first) that the decode alone and the model alone run on",
    )
    ap.add_argument(
        "--p1-rounds",
        type=int,
        default=4,
        help="measurements of the decode alone and the model alone, half before the full run "
        "and half after it (medians)",
    )
    ap.add_argument(
        "--catalog-checksums",
        action="store_true",
        help="give every photo an image_checksums entry (the MD5 of its bytes, like an object "
        "store's etag), so that no folder is listed; without it the column is left out",
    )
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.report_only:
        return _render(os.path.abspath(args.out), write=not args.no_write)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines.embed import default_pipeline_args

    beam_args = default_pipeline_args(args.beam_args.split())

    out = os.path.abspath(args.out)
    small_images = args.images // 4 if args.small_images is None else args.small_images
    if args.p1_only:
        small_images = 0
    sizes = [_prepare(out, args.images, 1, args)]
    if small_images > 0:
        sizes.append(_prepare(os.path.join(out, "small"), small_images, 2, args))
    catalog, workdir, n_images, version, model_desc = sizes[0]
    from models import artifact

    image_size = artifact.read_config(workdir, version).image_size

    print(f"bytecode cache warm-up: {_warm_imports():.1f}s", flush=True)
    p1: dict[str, Any] = {}
    ceiling = None
    if not args.p2_only:
        ceiling = _Ceiling(paths.embedder_dir(workdir, version), image_size, args, catalog)
        ceiling.measure(math.ceil(args.p1_rounds / 2))
    fulls = []
    for size in sizes:
        fulls.append(_run(size.catalog, size.workdir, D1, args.batch_size, beam_args))
        print(f"full run, {size.images} images: {fulls[-1][1]:.1f}s", flush=True)
    full, full_wall = fulls[0]
    if ceiling is not None:
        ceiling.measure(args.p1_rounds // 2)
        p1 = ceiling.close()
    # The 1% days of every size interleaved, so that the machine's drift hits them alike.
    rounds = 0 if args.p1_only else args.rounds
    inc_walls: list[list[float]] = [[] for _ in sizes]
    incs: list[dict[str, Any]] = [{"ok": 0, "skipped": 0, "extra": {}, "wall_s": math.nan}] * len(
        sizes
    )
    for r in range(rounds):
        for i, size in enumerate(sizes):
            incs[i], wall = _run(size.catalog, size.workdir, D2, args.batch_size, beam_args)
            inc_walls[i].append(wall)
            print(f"1% day, {size.images} images, round {r + 1}: {wall:.1f}s", flush=True)
    inc = incs[0]
    inc_wall = float(np.median(inc_walls[0])) if rounds else math.nan
    prof_path = os.path.join(out, "incremental.prof")
    if os.path.exists(prof_path):
        os.remove(prof_path)
    prof_wall = float("nan")
    if not (args.p2_only or args.p1_only):
        # Profiled idempotent re-run of day 2, single-threaded so that cProfile sees all the work.
        prof_wall = _profile_run(catalog, workdir, D2, args.batch_size, prof_path)

    t = Timings(
        n_images,
        full_wall,
        full["ok"],
        inc_wall,
        inc["ok"],
        inc["skipped"],
        float(np.median(p1["model"])) if p1 else math.nan,
        args.batch_size,
        model_desc,
    )
    results = {
        "timings": asdict(t),
        "p1": p1,
        "beam_args": beam_args,
        "full_extra": full["extra"],
        "full_pipeline_s": full["wall_s"],
        "inc_extra": inc["extra"],
        "inc_pipeline_s": inc["wall_s"],
        "prof_wall": prof_wall,
        "catalog_px": args.catalog_px,
        "catalog_checksums": args.catalog_checksums,
        "scales": [
            asdict(Scale(size.images, wall, walls))
            for size, (_, wall), walls in zip(sizes, fulls, inc_walls, strict=True)
            if walls
        ],
    }
    storage.write_text(os.path.join(out, "results.json"), json.dumps(results, indent=2))
    if rounds:
        print(
            f"1% day read {inc['extra'].get('images_read')} photos of {n_images}; "
            f"{inc['extra'].get('skipped_by_metadata')} skipped on metadata alone",
            flush=True,
        )
    return _render(out, write=not args.no_write)


def _render(out: str, write: bool) -> int:
    """BENCHMARKS.md section from OUT/results.json and OUT/incremental.prof."""
    r = json.loads(storage.read_text(os.path.join(out, "results.json")))
    prof_path = os.path.join(out, "incremental.prof")
    body = report(
        Timings(**r["timings"]),
        r.get("p1", {}),
        r.get("full_pipeline_s", math.nan),
        r["beam_args"],
        r["full_extra"],
        r["inc_extra"],
        r["inc_pipeline_s"],
        r["prof_wall"],
        _top(prof_path, "cumulative") if os.path.exists(prof_path) else "(not profiled)",
        _top(prof_path, "tottime") if os.path.exists(prof_path) else "(not profiled)",
        r.get("note", ""),
        r.get("catalog_px", 128),
        [Scale(**x) for x in r.get("scales", [])],
        r.get("catalog_checksums", False),
    )
    print(body, flush=True)
    if write:
        from benchmarks.report import write_section

        write_section("embed", body)
    return 0


def report(
    t: Timings,
    p1: dict[str, Any],
    full_pipeline_s: float,
    beam_args: list[str],
    full_extra: dict[str, Any],
    inc_extra: dict[str, Any],
    inc_pipeline_s: float,
    prof_wall: float,
    top_cum: str,
    top_own: str,
    extra_note: str = "",
    catalog_px: int = 128,
    scales: list[Scale] | None = None,
    catalog_checksums: bool = False,
) -> str:
    body = _report(
        t,
        p1,
        full_pipeline_s,
        beam_args,
        full_extra,
        inc_extra,
        inc_pipeline_s,
        prof_wall,
        top_cum,
        top_own,
        extra_note,
        catalog_px,
        scales or [],
        catalog_checksums,
    )
    if math.isnan(t.inc_wall_s):
        # --p1-only: no 1% days, so no (b) rows, no (b) analysis and no profile.
        lines = [ln for ln in body.splitlines() if not ln.startswith("| (b)")]
        text = "\n".join(lines) + "\n"
        start = text.find("- (b)")
        end = text.find("Profile of the 1% day")
        if start >= 0 and end > start:
            text = text[:start].rstrip() + "\n"
        if extra_note:  # it closes the (b) paragraph, cut above
            text = text.rstrip() + f"\n  ({extra_note})\n"
        text = text.replace("; 1% days are medians", "")
        return text.replace("What stops the targets:", "What limits the figure:")
    if p1:
        return body
    # --p2-only: no raw-model rates, so no (a) rows or (a) analysis (P1 is measured separately).
    lines = [ln for ln in body.splitlines() if not ln.startswith("| (a)")]
    text = "\n".join(lines) + "\n"
    start = text.find("- (a)")
    end = text.find("- (b)")
    if start >= 0 and end > start:
        text = text[:start] + text[end:]
    cut = text.find("Profile of the 1% day")
    if cut >= 0:
        text = text[:cut].rstrip() + "\n"
    return text.replace("What stops the targets:", "What limits the figure:")


def _report(
    t: Timings,
    p1: dict[str, Any],
    full_pipeline_s: float,
    beam_args: list[str],
    full_extra: dict[str, Any],
    inc_extra: dict[str, Any],
    inc_pipeline_s: float,
    prof_wall: float,
    top_cum: str,
    top_own: str,
    extra_note: str,
    catalog_px: int,
    scales: list[Scale],
    catalog_checksums: bool,
) -> str:
    ratio_b = t.inc_wall_s / t.full_wall_s
    p1_rows, p1_text = _p1_rows(t, p1, full_extra, full_pipeline_s, beam_args)
    outside = t.inc_wall_s - inc_pipeline_s  # interpreter, imports, model resolve, publish
    inc_load_s = inc_extra.get("load_model_latency_milli_secs", {}).get("mean", 0.0) / 1000
    inc_inf = inc_extra.get("inference_ms", {})
    inc_model_s = inc_inf.get("count", 0) * inc_inf.get("mean", 0.0) / 1000
    per_full_ms = 1000 * t.full_wall_s / max(t.full_embedded, 1)
    rest_s = max(inc_pipeline_s - inc_load_s - inc_model_s, 0.0)
    per_skip_ms = 1000 * rest_s / max(t.inc_skipped, 1)
    floor = per_skip_ms / per_full_ms + 0.01
    reads, by_meta = inc_extra.get("images_read", "?"), inc_extra.get("skipped_by_metadata", "?")
    listed = inc_extra.get("objects_listed", "?")
    statted = inc_extra.get("files_stat", "?")
    note = f"\n  ({extra_note})" if extra_note else ""
    given = (
        "; every photo has an `image_checksums` entry, so no folder is listed"
        if catalog_checksums
        else "; no `image_checksums`: unchanged photos are known by one `stat` of their files"
    )
    rows, growth = _scale_rows(scales)

    def verdict(good: bool) -> str:
        return "meets target" if good else "MISSES target"

    return f"""## Embed job (`benchmarks/embed_bench.py`)

Model: {t.model}. {t.images} listing images (generated catalog, {catalog_px} px JPEG{given}); the job ran on
the DirectRunner with `{" ".join(beam_args)}`, batch size {t.batch_size} (min = max),
on a machine shared with other jobs (full runs are single runs, expect +-15%; 1% days are medians).

| measure | value |
|---|---|
{p1_rows}
| (b) full run wall | {t.full_wall_s:.1f} s |
| (b) 1% day: {t.inc_embedded} embedded, {t.inc_skipped} skipped unchanged (median of the runs below) | {t.inc_wall_s:.1f} s |
| (b) **1% day / full run** (target <= 0.02) | **{ratio_b:.3f}** ({verdict(ratio_b <= 0.02)}) |
| (b) 1% day: photos read / skipped on metadata alone / files stat'ed / gs:// objects listed | {reads} / {by_meta} / {statted} / {listed} |
| (b) 1% day: what the skip was checked against (earlier partition files read for their keys) | {inc_extra.get("skip_check", "every earlier partition (before state snapshots)")} ({inc_extra.get("earlier_files", "?")}) |
| (b) cost per unchanged image (metadata only: stat or listing, join, skip; an upper bound: all of the pipeline's time except model load and model calls, divided by the unchanged images) | {per_skip_ms:.3f} ms (a full run: {per_full_ms:.2f} ms per image) |
{rows}
What stops the targets:

{p1_text}
- (b) The 1% day reads only the photos whose metadata key is new ({reads} of {t.images}): an
  unchanged photo costs its share of {"no file system call (the catalog's checksum)" if catalog_checksums else "one stat of its file"}, of the bucketed Arrow join with the
  newest state snapshot (never bytes; and with every earlier partition's keys only when one
  changed since the snapshot), of writing its row into today's snapshot and of the catalog
  parse, at most
  ~{per_skip_ms:.3f} ms each here. The fixed part is {outside:.1f} s outside the pipeline
  (interpreter, TF and Beam imports, publish) plus model load {inc_load_s:.1f} s and
  {inc_model_s:.1f} s of model calls for {t.inc_embedded} images, inside a pipeline of
  {inc_pipeline_s:.1f} s. Start-up and model load alone ({outside + inc_load_s:.1f} s) are
  {(outside + inc_load_s) / t.full_wall_s:.1%} of the full run at this size. A full run costs
  {per_full_ms:.2f} ms per image; as the catalog grows the fixed part fades and the ratio tends
  to ~{floor:.1%} (1% of the photos at the full-run cost, 99% at the per-unchanged cost above).{growth}{note}

Profile of the 1% day (an idempotent re-run, single-threaded so that cProfile sees every step;
{prof_wall:.1f} s under the profiler), top functions by cumulative time:

```
{top_cum}
```

By own time:

```
{top_own}
```
"""


def _p1_rows(
    t: Timings,
    p1: dict[str, Any],
    full_extra: dict[str, Any],
    pipeline_s: float,
    beam_args: list[str],
) -> tuple[str, str]:
    """P1's table rows and paragraph: decode alone, model alone, their ceiling, and the job."""
    if not p1:
        return "", ""

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.0f}" for x in xs)

    decode, one, two = (float(np.median(p1[k])) for k in ("decode", "model_one", "model_two"))
    model = float(np.median(p1["model"]))
    ceiling = ceiling_rate(decode, model)
    per_round = [ceiling_rate(d, m) for d, m in zip(p1["decode"], p1["model"], strict=True)]
    job = t.full_embedded / t.full_wall_s
    inside = t.full_embedded / pipeline_s if pipeline_s == pipeline_s else math.nan
    ratio = job / ceiling
    inf = full_extra.get("inference_ms", {})
    model_s = inf.get("count", 0) * inf.get("mean", 0.0) / 1000
    load_s = full_extra.get("load_model_latency_milli_secs", {}).get("mean", 0.0) / 1000
    w, n = p1["workers"], p1["photos"]
    verdict = "meets target" if ratio >= 0.9 else "MISSES target"
    mode = " ".join(a for a in beam_args if a.startswith("--direct")) or "see the flags above"
    rows = f"""| (a) safe decode alone: `decode_image` on a pool of {w} processes (one per core), the bytes already in memory; {n} of these photos, {len(p1["decode"])} rounds | **{decode:.0f} images/s** (median; rounds {runs(p1["decode"])}) |
| (a) model alone: batched pixel-signature calls (batch {t.batch_size}) on the same photos' decoded pixels, 1 caller (TensorFlow's threads on every core) / 2 concurrent callers | {one:.0f} / {two:.0f} images/s (medians; rounds {runs(p1["model_one"])} / {runs(p1["model_two"])}) |
| (a) model alone, all cores (the better of the two, per round) | **{model:.0f} images/s** (median) |
| (a) **ceiling** = 1 / (1 / decode + 1 / model): both on the same cores, their CPU seconds per photo added | **{ceiling:.0f} images/s** (of the medians; per round {runs(per_round)}) |
| (a) embed job, end to end (`python -m vsearch embed` in a fresh process, `{mode}`: interpreter, imports, model load, catalog read, change detection, write and publish included) | **{job:.0f} images/s** ({t.full_embedded} in {t.full_wall_s:.1f} s) |
| (a) **job / ceiling** (target >= 0.9) | **{ratio:.2f}** ({verdict}) |
| (a) job inside its pipeline (the pipeline's own wall, {pipeline_s:.1f} s: no interpreter start, imports or publish) / ceiling | {inside:.0f} images/s / {inside / ceiling:.2f} |
| (a) job / model alone (the figure before issue 33) | {job / model:.2f} |
| (a) job after its model load (the pipeline's wall less the model load) / ceiling | {t.full_embedded / (pipeline_s - load_s):.0f} images/s / {t.full_embedded / (pipeline_s - load_s) / ceiling:.2f} |
| (a) ceiling with the model's one-caller rate (the job's RunInference makes one model call at a time) / job against it | {ceiling_rate(decode, one):.0f} images/s / **{job / ceiling_rate(decode, one):.2f}** |
| (a) time inside the model's signature calls in the job, summed over batches / model load | {model_s:.1f} s ({inf.get("count", 0)} batches, mean {inf.get("mean", 0)} ms) / {load_s:.1f} s |"""
    gap = t.full_wall_s - t.full_embedded / ceiling
    outside = t.full_wall_s - pipeline_s
    rest = pipeline_s - load_s
    steady = t.full_embedded / rest
    if outside + load_s >= gap / 2:
        where = "So most of the gap is fixed cost, which a larger catalog spreads thinner."
    else:
        where = "So most of the gap is in the pipeline's work per photo, not fixed cost."
    where += (
        f" The job's model calls took {1000 * model_s / t.full_embedded:.2f} ms a photo (the "
        f"model alone: {1000 / one:.2f} ms with one caller, {1000 / two:.2f} ms with two); "
        f"against the ceiling at the one-caller rate the job is at "
        f"{job / ceiling_rate(decode, one):.2f}."
    )
    text = f"""- (a) The ceiling adds the decode's and the model's CPU time per photo, each measured on
  all {w} cores: {1000 / decode:.2f} ms + {1000 / model:.2f} ms = {1000 / ceiling:.2f} ms a photo. The job took
  {1000 * t.full_wall_s / t.full_embedded:.2f} ms a photo end to end: {gap:.1f} s more than the ceiling
  for {t.full_embedded} photos. Of its {t.full_wall_s:.1f} s, {outside:.1f} s are outside the pipeline
  (interpreter, Beam and TensorFlow imports, model checks, publish) and {load_s:.1f} s are the model
  load inside it, which no photo can pass (RunInference loads the model in its step's setup);
  the other {rest:.1f} s ({steady:.0f} images/s, **{steady / ceiling:.2f}** of the ceiling) hold the
  pipeline's construction, the catalog read and change detection, the reads, the decode and
  the model calls, Beam's per-element steps and the Parquet writes. {where}"""
    return rows, text


def _scale_rows(scales: list[Scale]) -> tuple[str, str]:
    """Table rows for each catalog size's runs and, with two sizes, the fit; and a sentence on
    what the ratio does as the catalog grows."""
    rows = [
        f"| (b) {s.images} images: full run / each 1% day run, in order (fresh processes) | "
        f"{s.full_wall_s:.1f} s / {', '.join(f'{w:.1f}' for w in s.inc_walls_s)} s |"
        for s in scales
    ]
    if len(scales) < 2:
        return "\n".join(rows) + ("\n" if rows else ""), ""
    big, small = max(scales, key=lambda s: s.images), min(scales, key=lambda s: s.images)
    f = fit(small, big)
    if not f.usable:
        rows.append(
            f"| (b) fit through the two sizes | no fit: a slope came out <= 0 (full run "
            f"{f.full_per_image_ms:.4f} ms, 1% day {f.inc_per_image_ms:.4f} ms per photo), the "
            f"sizes are too close or the runs too noisy |"
        )
        return "\n".join(rows) + "\n", ""
    reach = f.images_for(0.02)
    where = "no catalog size" if reach is None else f"~{reach:,.0f} images"
    rows += [
        f"| (b) fit through the two sizes, wall = fixed + per photo x photos: full run / 1% day | "
        f"{f.full_fixed_s:.1f} s + {f.full_per_image_ms:.3f} ms / "
        f"{f.inc_fixed_s:.1f} s + {f.inc_per_image_ms:.4f} ms |",
        f"| (b) **cost per unchanged image, marginal** (the 1% day's cost per catalog photo, "
        f"less the 1% it embeds at the full run's cost) | **{1000 * f.per_unchanged_ms:.1f} us** |",
        f"| (b) 1% day / full run as the catalog grows (fixed costs faded) / where it reaches 2% "
        f"| {f.ratio_limit:.3f} / {where} |",
    ]
    growth = (
        f" Measured instead of bounded: through the {small.images} and {big.images} image "
        f"catalogs (1% days interleaved, medians), a run's fixed cost is {f.inc_fixed_s:.1f} s "
        f"for the 1% day ({f.full_fixed_s:.1f} s for a full run) and each unchanged photo adds "
        f"{1000 * f.per_unchanged_ms:.1f} us, so the ratio tends to {f.ratio_limit:.1%} and "
        f"reaches 2% at {where} (two single full runs and medians of "
        f"{len(big.inc_walls_s)} 1% days: a rough line, not a law)."
    )
    return "\n".join(rows) + "\n", growth


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
