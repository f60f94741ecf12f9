"""The embed stage's checks. Before any work: the model exists, the snapshot is not empty or
sharply shrunk (a broken upstream export must not empty the index), and every earlier Parquet
file can be read (one clear error naming the file, not a worker traceback in the middle of the
job). After the job: the share of dead-lettered images allows publishing the day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pyarrow.parquet as pq

from core import paths, storage
from models import artifact


class EmbedError(RuntimeError):
    """The run cannot start (no model) or must not publish (too many bad images)."""


def resolve_model(workdir: str, version: str | None) -> artifact.ModelConfig:
    """--model, else the published version (``models.artifact``), checked before any work."""
    try:
        config = artifact.resolve(workdir, version)
        artifact.check_saved_model(paths.embedder_dir(workdir, config.version))
    except artifact.ModelArtifactError as e:
        raise EmbedError(str(e)) from e
    return config


def count_listings(catalog: str, date: dt.date) -> int | None:
    """Rows of a day's listings table from metadata (Parquet footer) or lines (JSONL)."""
    from core import snapshot

    table = snapshot.find_table(catalog, date, "listings")
    if table is None:
        return None
    with storage.open_read(table.uri) as f:
        if table.fmt == "parquet":
            try:
                return int(pq.ParquetFile(f).metadata.num_rows)
            except Exception as e:
                raise EmbedError(f"cannot read {table.uri}: {type(e).__name__}: {e}") from e
        return sum(1 for line in f if line.strip())


def check_shrink(
    catalog: str,
    date: dt.date,
    today: int | None,
    earlier_days: Sequence[dt.date],
    max_shrink: float,
) -> None:
    """Refuse a day whose snapshot (``today`` rows, ``count_listings``) is empty or lost more than
    ``max_shrink`` of the listings of the last embedded day: a broken upstream export must not
    empty the index."""
    if today == 0:
        raise EmbedError(
            f"the listings snapshot of {date} ({paths.catalog_day(catalog, date)}) is empty; "
            "refusing to publish an empty day (pass --allow-shrink if that is intended)"
        )
    before = next((n for d in earlier_days if (n := count_listings(catalog, d))), None)
    if today is None or before is None:
        return
    if today < before * (1.0 - max_shrink):
        raise EmbedError(
            f"the listings snapshot of {date} has {today} rows, {1 - today / before:.1%} fewer "
            f"than the {before} of the last embedded day (> --max-shrink-fraction {max_shrink:.0%}); "
            "refusing it as a broken export (pass --allow-shrink if the catalog really shrank)"
        )


def check_readable(uris: Sequence[str]) -> None:
    """Open every earlier Parquet file's footer before any work: a truncated file of an earlier
    day is one clear error naming it, not a worker traceback in the middle of the job. On gs://
    the footers are read ``storage.IO_THREADS`` at a time (a year of partitions is ~1,000 files
    on the full check)."""

    def footer(uri: str) -> None:
        try:
            with storage.open_read(uri) as f:
                pq.ParquetFile(f).metadata  # noqa: B018 (reading the footer is the check)
        except Exception as e:
            raise EmbedError(
                f"earlier embedding file {uri} is unreadable ({type(e).__name__}: {e}); "
                "restore it or delete its day's partition and re-run that day"
            ) from e

    storage.map_io(footer, uris, remote=any(storage.is_gcs(u) for u in uris))


def too_many_dead_letters(
    dead: int, read: int, max_bad_fraction: float, partition: str, reasons: str
) -> EmbedError:
    """The error of a run whose ``dead`` of ``read`` images exceed ``max_bad_fraction``: it does
    not publish, and ``partition`` stays as it was (the dead letters are in ``reasons``)."""
    return EmbedError(
        f"{dead} of {read} images dead-lettered ({dead / read:.2%} > --max-bad-fraction "
        f"{max_bad_fraction:.2%}); partition {partition} left unchanged. Reasons: {reasons}"
    )
