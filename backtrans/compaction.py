"""Compaction: the small shards a run commits become few shards of `output.min_rows_per_file` rows.

Ray Data's checkpoint records a row when the write task that holds it ends, and a write task takes
at least `min_rows_per_file` rows. Writing 50,000-row shards during the run would leave up to
50,000 finished, paid-for rows uncommitted at any moment, all sent again after a kill. So a run
commits every `output.commit_rows` rows, and a finished run rewrites its shards into big ones with
Ray Data: first into `OUTPUT/.compact/`, then a marker that names the shards they replace (written
after the shards, so it exists only once they all do), then the swap. The job writes the compacted
shards while it reads the committed ones for its summary and curated subsets, and swaps only when
both are done. A run killed during the swap finishes it when the job starts again
(`finish_compaction`); one killed before the marker leaves `data/` as it was. The swap needs no
atomic rename: it is repeatable from the marker. The checkpoint holds row ids, not file names, so it
stays valid throughout.
"""

from __future__ import annotations

import json

from backtrans.output import OutputFolder, write_parquet


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def write_compacted(folder: OutputFolder, min_rows_per_file: int) -> None:
    """Write `data/` again into `.compact/` as shards of at least `min_rows_per_file` rows, unless it
    already is; `finish_compaction` swaps them in."""
    shards = folder.parquet_files(folder.data)
    if len(shards) <= 1 or len(shards) <= folder.count_rows(folder.data) // min_rows_per_file + 1:
        return
    folder.delete_dir(folder.compact)
    write_parquet(folder.read_written(folder.data), folder, folder.compact, min_rows_per_file)
    folder.write_text(folder.compact_marker, json.dumps([_name(shard) for shard in shards]))


def finish_compaction(folder: OutputFolder) -> None:
    """Swap compacted shards into `data/` if a compaction got as far as its marker; else drop them."""
    if not folder.exists(folder.compact_marker):
        folder.delete_dir(folder.compact)
        return
    for name in json.loads(folder.read_text(folder.compact_marker)):
        folder.delete_file(f"{folder.data}/{name}")  # some may be gone: removed before a swap was cut short
    for shard in folder.parquet_files(folder.compact):
        folder.move(shard, f"{folder.data}/{_name(shard)}")
    folder.delete_dir(folder.compact)
