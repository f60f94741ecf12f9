"""The index benchmarks' vectors and builds: each DESIGN.md set generated once and cached as .npy,
and every build in a fresh process (ours, autofaiss in its own virtualenv), so that its build time
and peak memory are its own."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks import vectors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTOFAISS_PY = os.path.join(ROOT, ".venv-autofaiss", "bin", "python")
MEMORY_BUDGET = 8 << 30  # ours and autofaiss get the same index memory budget
VALIDATION_SEED = 2


def status_kb(pid: int, field: str) -> int:
    """A memory field of ``/proc/PID/status`` (VmHWM, RssAnon, RssFile...), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status (not Linux?)")


def peak_rss_mb() -> float:
    """This process's own peak resident memory (Linux ``VmHWM``), in MB.

    Not ``getrusage(...).ru_maxrss``: Linux carries it across ``execve``, so a child spawned by a
    large parent (this benchmark holds the database and the exact index) reports the parent's
    peak. That inflated the clustered build's figure to 7.6 GB in an earlier run.
    """
    return status_kb(os.getpid(), "VmHWM") / 1024


def npy_batches(path: str, batch: int = 65536) -> Callable[[], Iterator[pa.RecordBatch]]:
    """Embedding batches over a .npy (memory-mapped): row i is listing L{i:08d}, image 0."""

    def make() -> Iterator[pa.RecordBatch]:
        db = np.load(path, mmap_mode="r")
        for s in range(0, len(db), batch):
            v = np.ascontiguousarray(db[s : s + batch], dtype=np.float32)
            n, d = v.shape
            ids = [f"L{i:08d}" for i in range(s, s + n)]
            yield pa.RecordBatch.from_pydict(
                {
                    "listing_id": pa.array(ids),
                    "image_uri": pa.array(ids),
                    "image_index": pa.array(np.zeros(n, np.int16)),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), d),
                    "category_pred": pa.nulls(n, pa.string()),
                }
            )

    return make


def build_child(npy: str, out: str, settings: dict[str, Any], set_name: str, results: Any) -> None:
    from index import builder

    # Validation queries from outside the database (as review photos are in production), drawn
    # with their own seed: neither database rows nor the benchmark's queries.
    # (catalog: the build's own held-out sample queries; no generator to draw more from.)
    make = vectors.SETS.get(set_name)
    extra = make(1000, vectors.DATABASE_SEED, point_seed=VALIDATION_SEED) if make else None
    t = time.perf_counter()
    r = builder.build_index(
        npy_batches(npy), builder.IndexSettings(**settings), out, "bench", "b", extra_queries=extra
    )
    results.put(
        {
            "build_s": time.perf_counter() - t,
            "peak_rss_mb": peak_rss_mb(),
            "manifest_uri": r.manifest_uri,
            "factory": r.manifest.factory,
            "dim": r.manifest.dim,
            "search_params": r.manifest.search_params,
            "validation": r.manifest.validation.__dict__ if r.manifest.validation else None,
            "trials": [(t["factory"], t["reached"]) for t in r.report.get("trials", [])],
        }
    )


def build_ours(npy: str, out: str, set_name: str, **settings: Any) -> dict[str, Any]:
    """Build in a fresh process (spawned: clean peak-RSS figure, no forked OpenMP state)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    settings.setdefault("memory_budget_bytes", MEMORY_BUDGET)
    p = ctx.Process(target=build_child, args=(npy, out, settings, set_name, q))
    p.start()
    try:
        while True:
            try:
                result: dict[str, Any] = q.get(timeout=5)
                return result
            except queue.Empty:
                if not p.is_alive():  # a crash (e.g. a segfault) would otherwise wait forever
                    raise RuntimeError(
                        f"the {set_name} build in {out} died (exit code {p.exitcode})"
                    ) from None
    finally:
        p.join()


def build_autofaiss(emb_dir: str, out: str) -> dict[str, Any] | None:
    if not os.path.exists(AUTOFAISS_PY):
        print(f"  autofaiss: {AUTOFAISS_PY} missing (run benchmarks/autofaiss_venv.sh); skipped")
        return None
    cmd = [
        AUTOFAISS_PY,
        os.path.join(ROOT, "benchmarks", "autofaiss_peer.py"),
        "--embeddings",
        emb_dir,
        "--out",
        out,
        "--max-index-memory-usage",
        f"{MEMORY_BUDGET >> 30}G",
        "--current-memory-available",
        "16G",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        print(f"  autofaiss failed:\n{proc.stderr[-2000:]}")
        return None
    with open(os.path.join(out, "result.json")) as f:
        return dict(json.load(f))


def cached_vectors(name: str, n: int, nq: int, work: str, npy: str) -> tuple[np.ndarray, Any]:
    """The set's database (memory-mapped from ``npy``) and queries, generated once per (set,
    n, nq) and cached under ``work``: generating 1M manifold vectors costs minutes."""
    qpath = os.path.join(work, name, f"queries-{nq}.npy")
    if os.path.exists(npy) and os.path.exists(qpath):
        db = np.load(npy, mmap_mode="r")
        if db.shape[0] == n or name == "catalog":
            print(f"  vectors: cached {npy}", flush=True)
            return np.asarray(db), np.load(qpath)
    if name == "catalog":  # real embeddings: as many as the embed benchmark left
        db, q = vectors.catalog(os.path.join(ROOT, vectors.CATALOG_RUN), nq)
    else:
        db, q = vectors.database_and_queries(name, n, nq)
    np.save(npy + ".tmp.npy", db)
    os.replace(npy + ".tmp.npy", npy)
    np.save(qpath, q)
    return db, q
