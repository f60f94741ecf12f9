"""PackedTable: how the daily embed's bucketed Arrow tables cross a shuffle."""

from __future__ import annotations

import pickle

import pyarrow as pa

from transforms.packed_table import PackedTable


def _rows(n: int) -> pa.Table:
    return pa.table(
        {
            "listing_id": [f"L{i:07d}" for i in range(n)],
            "image_index": pa.array([i % 5 for i in range(n)], pa.int16()),
            "image_uri": [f"gs://bucket/images/L{i:07d}/{i % 5}.jpg" for i in range(n)],
            "image_uris": [[f"a/{i}.jpg", f"b/{i}.jpg"] if i % 7 else None for i in range(n)],
        }
    )


def test_a_sliced_table_pickles_to_its_rows_not_its_buffers() -> None:
    """Chunks that are slices of one buffer (as Parquet reads and batches make them): a plain
    pickle carries the whole buffer once per chunk, the packed one only the rows, compressed;
    both read back equal (types, nulls and lists included)."""
    whole = _rows(50_000)
    k = whole.num_rows // 5
    sliced = pa.concat_tables([whole.slice(i * k, k) for i in range(5)])
    plain = pickle.dumps(sliced, protocol=pickle.HIGHEST_PROTOCOL)
    packed = pickle.dumps(PackedTable(sliced), protocol=pickle.HIGHEST_PROTOCOL)
    assert len(plain) > 4 * whole.nbytes  # the bloat this wrapper exists for
    assert len(packed) * 3 < whole.nbytes  # compressed, not only compacted
    back = pickle.loads(packed)
    assert isinstance(back, PackedTable)
    assert back.table.equals(whole)
    assert back.table.schema == whole.schema


def test_an_empty_table_keeps_its_schema() -> None:
    schema = pa.schema([("listing_id", pa.string()), ("image_index", pa.int32())])
    back = pickle.loads(pickle.dumps(PackedTable(schema.empty_table())))
    assert back.table.num_rows == 0 and back.table.schema == schema


def test_a_table_is_packed_once_however_often_beam_pickles_it(monkeypatch) -> None:
    """Beam encodes an element again at every output it passes (to sample its size): the
    compression must run once per table, and a table that came out of a shuffle must not be
    compressed again when it goes into the next one."""
    from transforms import packed_table

    calls: list[int] = []
    real_pack = packed_table.pack
    monkeypatch.setattr(packed_table, "pack", lambda t: calls.append(t.num_rows) or real_pack(t))
    element = PackedTable(_rows(1_000))
    first = pickle.dumps(element)
    assert pickle.dumps(element) == first
    received = pickle.loads(first)
    assert pickle.dumps(received) == first
    assert received.table.equals(element.table)
    assert calls == [1_000]
