"""`vsearch upgrade-embeddings`: partitions of earlier versions (a `dt` column in the files, no
manifest) become readable by pandas and DuckDB, with the same rows; current partitions are kept."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import embeddings, partitions, paths
from vsearch import cli

DIM, VERSION = 8, "20260101-abc"


def _rows(day: int, n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(day)
    return [
        {
            "listing_id": f"L{day}-{i}",
            "image_uri": f"/photos/{day}/{i}.jpg",
            "image_index": 0,
            "image_sha256": f"{day:02d}{i:062d}",
            "model_version": VERSION,
            "embedding": rng.normal(size=DIM),
            "category_pred": "home/lamps",
            "category_score": 0.5,
            "created_at": dt.datetime(2026, 1, day, tzinfo=dt.UTC),
        }
        for i in range(n)
    ]


def _legacy_partition(workdir: str, day: int, sizes: tuple[int, ...]) -> list[pa.Table]:
    """Written as earlier versions did: `dt` inside every file, no _manifest.json."""
    folder = Path(paths.embeddings_dir(workdir, VERSION, dt.date(2026, 1, day)))
    folder.mkdir(parents=True)
    tables = []
    for i, n in enumerate(sizes):
        t = pa.Table.from_batches([embeddings.to_record_batch(_rows(day * 10 + i, n), DIM)])
        t = t.append_column("dt", pa.array([dt.date(2026, 1, day)] * n, pa.date32()))
        pq.write_table(t, folder / f"part-{i:05d}-of-{len(sizes):05d}.parquet")
        tables.append(t.drop_columns(["dt"]))
    return tables


def _current_partition(workdir: str, tmp: Path) -> pa.Table:
    date = dt.date(2026, 1, 3)
    staged = str(tmp / "staged")
    t = pa.Table.from_batches([embeddings.to_record_batch(_rows(3, 4), DIM)])
    out = f"{staged}/part-00000-of-00001.parquet"
    embeddings.write_parquet(out, t.to_batches(), DIM)
    partitions.publish(staged, paths.embeddings_dir(workdir, VERSION, date), "a1", [(out, 4)])
    return t


def _vsearch(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["upgrade-embeddings", *args]) == 0
    return capsys.readouterr().out


def test_legacy_partitions_become_readable_with_the_same_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = str(tmp_path / "work")
    day1 = _legacy_partition(workdir, 1, (3, 2))
    day2 = _legacy_partition(workdir, 2, (5,))
    day3 = _current_partition(workdir, tmp_path)
    root = paths.embeddings_root(workdir, VERSION)
    current_files = sorted(Path(paths.embeddings_dir(workdir, VERSION, "2026-01-03")).iterdir())
    with pytest.raises(
        (pa.ArrowInvalid, pa.ArrowTypeError)
    ):  # the problem a user meets: the hive key is also a column
        pd.read_parquet(root)

    out = _vsearch(capsys, "--workdir", workdir, "--dry-run")
    assert "3 partitions: 1 current, 2 legacy (dry run: nothing written)" in out
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        pd.read_parquet(root)  # a dry run writes nothing

    out = _vsearch(capsys, "--workdir", workdir)
    assert "dt=2026-01-01: rewritten (2 files, 5 rows)" in out
    assert "3 partitions: 1 current, 2 rewritten" in out
    # Every reader opens the folder with no options; rows and values are the ones written.
    df = pd.read_parquet(root)
    assert len(df) == 5 + 5 + 4
    assert df.groupby("dt", observed=True).size().to_dict() == {
        "2026-01-01": 5,
        "2026-01-02": 5,
        "2026-01-03": 4,
    }
    [(n,)] = (
        duckdb.connect()
        .execute(f"SELECT count(*) FROM read_parquet('{root}/*/*.parquet', hive_partitioning=true)")
        .fetchall()
    )
    assert n == 14
    for day, want in ((1, day1), (2, day2)):
        folder = paths.embeddings_dir(workdir, VERSION, dt.date(2026, 1, day))
        assert partitions.read_manifest(folder) is not None
        got = pq.read_table(folder, partitioning=None)
        assert got.column_names == embeddings.schema(DIM).names
        assert got.equals(pa.concat_tables(want))
    # The current partition was left alone, file for file.
    assert sorted(Path(paths.embeddings_dir(workdir, VERSION, "2026-01-03")).iterdir()) == (
        current_files
    )
    assert pq.read_table(current_files[-1]).equals(day3)
    # Idempotent: a second run rewrites nothing.
    assert "3 partitions: 3 current" in _vsearch(capsys, "--workdir", workdir)


def test_an_empty_workdir_says_there_is_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "nothing to do" in _vsearch(capsys, "--workdir", str(tmp_path))
