"""A finished run's small committed shards become few big ones, and a cut-short swap is finished."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from backtrans.compaction import finish_compaction, write_compacted
from backtrans.output import OutputFolder


def _shards(folder: OutputFolder) -> list[str]:
    return sorted(path.name for path in Path(folder.data).glob("*.parquet"))


def _write_shards(directory, sizes: list[int], start: int = 0) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for number, size in enumerate(sizes):
        ids = list(range(start, start + size))
        names.append(f"part-{start:05d}-{number}.parquet")
        pq.write_table(pa.table({"id": ids, "text": [f"row {i}" for i in ids]}), directory / names[-1])
        start += size
    return names


def test_compaction_rewrites_small_shards_into_min_rows_per_file(tmp_path, local_ray):
    folder = OutputFolder.at(str(tmp_path))
    committed = _write_shards(tmp_path / "data", [30] * 10)
    write_compacted(folder, min_rows_per_file=100)
    assert _shards(folder) == committed  # nothing is swapped in until finish_compaction
    finish_compaction(folder)
    table = pq.read_table(folder.data)
    assert sorted(table.column("id").to_pylist()) == list(range(300))
    sizes = [pq.read_metadata(f"{folder.data}/{name}").num_rows for name in _shards(folder)]
    assert len(sizes) < 10 and sum(sizes) == 300, sizes
    assert all(size >= 100 for size in sorted(sizes)[1:]), sizes  # all but one shard hold min_rows_per_file
    assert not (tmp_path / ".compact").exists()
    before = _shards(folder)
    write_compacted(folder, min_rows_per_file=100)  # already compact: left alone
    assert not (tmp_path / ".compact").exists()
    finish_compaction(folder)
    assert _shards(folder) == before


def test_a_swap_cut_short_is_finished_and_a_write_cut_short_is_dropped(tmp_path):
    folder = OutputFolder.at(str(tmp_path))
    old = _write_shards(tmp_path / "data", [5, 5, 5])
    new = _write_shards(tmp_path / ".compact", [15], start=0)
    Path(folder.compact_marker).write_text(json.dumps(old))
    (tmp_path / "data" / old[0]).unlink()  # the killed swap had removed one old shard
    finish_compaction(folder)
    assert _shards(folder) == new and not (tmp_path / ".compact").exists()
    assert sorted(pq.read_table(folder.data).column("id").to_pylist()) == list(range(15))

    _write_shards(tmp_path / ".compact", [15], start=100)  # no marker: the compacted write did not finish
    finish_compaction(folder)
    assert _shards(folder) == new and not (tmp_path / ".compact").exists()
