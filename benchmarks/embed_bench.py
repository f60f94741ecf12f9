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

The parts: ``embed_catalog`` (the photo sets), ``embed_measure`` (the ceiling and the job runs),
``embed_report`` (the section); this module is the command line and the order of the runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from typing import Any

import numpy as np

from benchmarks.embed_catalog import D1, D2, prepare
from benchmarks.embed_measure import Ceiling, profile_run, run_job, warm_imports
from benchmarks.embed_report import Scale, Timings, render
from core import paths, storage


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
        return render(os.path.abspath(args.out), write=not args.no_write)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines.embed import default_pipeline_args

    beam_args = default_pipeline_args(args.beam_args.split())

    out = os.path.abspath(args.out)
    small_images = args.images // 4 if args.small_images is None else args.small_images
    if args.p1_only:
        small_images = 0
    sizes = [prepare(out, args.images, 1, args)]
    if small_images > 0:
        sizes.append(prepare(os.path.join(out, "small"), small_images, 2, args))
    catalog, workdir, n_images, version, model_desc = sizes[0]
    from models import artifact

    image_size = artifact.read_config(workdir, version).image_size

    print(f"bytecode cache warm-up: {warm_imports():.1f}s", flush=True)
    p1: dict[str, Any] = {}
    ceiling = None
    if not args.p2_only:
        ceiling = Ceiling(paths.embedder_dir(workdir, version), image_size, args, catalog)
        ceiling.measure(math.ceil(args.p1_rounds / 2))
    fulls = []
    for size in sizes:
        fulls.append(run_job(size.catalog, size.workdir, D1, args.batch_size, beam_args))
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
            incs[i], wall = run_job(size.catalog, size.workdir, D2, args.batch_size, beam_args)
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
        prof_wall = profile_run(catalog, workdir, D2, args.batch_size, prof_path)

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
    return render(out, write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
