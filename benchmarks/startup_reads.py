"""What a run's start on gs:// costs to learn which partitions are committed (BENCHMARKS.md
section ``startup_reads``).

Every embed, build-index and reader run starts with ``embeddings.committed_partitions``: one
listing of the model's embeddings folder, then one ``_manifest.json`` per day. After a year of
daily runs that is ~365 manifests. Measured side by side on the loopback GCS server
(fake-gcs-server): the package's reader against the same reads made one after another through
Beam's ``FileSystems`` (an existence check, then open and read), which is what the package did
before. HTTP requests are counted at the client; ``--latency-ms`` adds a sleep to every request,
to show what a real bucket's round trips (tens of ms) do to each.

    python -m benchmarks.startup_reads [--days 365] [--rounds 5] [--latency-ms 0 30] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import gcs_latency
from benchmarks.report import write_section

VERSION = "v1"
FIRST_DAY = dt.date(2025, 1, 1)


def _serial_beam(workdir: str) -> int:
    """The reads one by one through Beam, as before: list, then per day exists + open + read."""
    from apache_beam.io.filesystems import FileSystems

    from core import partitions, paths, storage

    days = sorted({u.split("dt=")[1][:10] for u in storage.list_prefix(workdir) if "dt=" in u})
    found = 0
    for day in days:
        uri = storage.join(
            paths.embeddings_dir(workdir, VERSION, dt.date.fromisoformat(day)), partitions.MANIFEST
        )
        if FileSystems.exists(uri):
            with FileSystems.open(uri) as f:
                found += bool(json.loads(f.read())["files"])
    return found


def _ours(workdir: str) -> int:
    from core import embeddings

    return len(embeddings.committed_partitions(workdir, VERSION))


def _measure(
    fn: Callable[[str], int], workdir: str, rounds: int, meter: Any
) -> tuple[float, int, int]:
    walls, requests = [], 0
    found = 0
    for _ in range(rounds):
        meter.count = 0
        t0 = time.perf_counter()
        found = fn(workdir)
        walls.append(time.perf_counter() - t0)
        requests = meter.count
    return statistics.median(walls), requests, found


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="startup_reads", description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=365, help="committed daily partitions")
    ap.add_argument("--rounds", type=int, default=5, help="runs of each reader (medians)")
    gcs_latency.add_latency_flag(ap)
    ap.add_argument("--write", action="store_true", help="rewrite the BENCHMARKS.md section")
    args = ap.parse_args(argv)

    from core import partitions, paths, storage

    with gcs_latency.loopback_workdir("startup-reads") as workdir:
        for i in range(args.days):
            day = FIRST_DAY + dt.timedelta(days=i)
            staged = paths.staging_dir(workdir, "embed", day, f"a{i}")
            part = storage.join(staged, paths.shard_name(0, 1, ".parquet"))
            storage.write_bytes(part, b"PAR1")  # never opened: only the manifests are read
            partitions.publish(
                staged, paths.embeddings_dir(workdir, VERSION, day), f"a{i}", [(part, 1)]
            )

        with gcs_latency.metered_requests() as meter:

            def both() -> tuple[gcs_latency.Result, gcs_latency.Result]:
                before = _measure(_serial_beam, workdir, args.rounds, meter)
                ours = _measure(_ours, workdir, args.rounds, meter)
                assert before[2] == ours[2] == args.days, (before, ours)
                return before[:2], ours[:2]

            rows = gcs_latency.compare(
                args.latency_ms, lambda s: setattr(meter, "delay_s", s), both, "one by one"
            )

    body = _report(args.days, args.rounds, rows)
    print(body)
    if args.write:
        write_section("startup_reads", body)
    return 0


def _report(days: int, rounds: int, rows: list[gcs_latency.Row]) -> str:
    return f"""## Start-up reads on gs:// (`benchmarks/startup_reads.py`)

Which partitions are committed, read at the start of every run: {days} daily partitions of one
model on the loopback GCS server (fake-gcs-server), medians of {rounds} runs of each reader, HTTP
requests counted at the client. "One by one" is what the package did before: Beam's
`FileSystems.exists` then `open` and `read` per day's `_manifest.json`. Ours is
`embeddings.committed_partitions`: existence from the listing it already made, one media GET per
manifest, `storage.IO_THREADS` (16) at a time. The added latency is a sleep in every request,
standing in for a real bucket's round trip.

{gcs_latency.table(rows, "one by one")}
"""


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
