"""Compaction: the small shards a run commits become few shards of `output.min_rows_per_file` rows.

Ray Data's checkpoint records a row when the write task that holds it ends, and a write task takes
at least `min_rows_per_file` rows. Writing 50,000-row shards during the run would leave up to
50,000 finished, paid-for rows uncommitted at any moment, all sent again after a kill. So a run
commits every `output.commit_rows` rows, and a finished run rewrites its shards into big ones with
Ray Data: first into `OUTPUT/.compact/`, then a marker that names the shards they replace, then the
swap. The job writes the compacted shards while it reads the committed ones for its summary and
curated subsets, and swaps only when both are done. A run killed during the swap finishes it when
the job starts again (`finish_compaction`); one killed before the marker leaves `data/` as it was.
The checkpoint holds row ids, not file names, so it stays valid throughout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from backtrans.output import OutputFolder, count_rows, parquet_files, read_written, write_shards

MARKER = "_replaces.json"


def write_compacted(folder: OutputFolder, min_rows_per_file: int) -> None:
    """Write `data/` again into `.compact/` as shards of at least `min_rows_per_file` rows, unless it
    already is; `finish_compaction` swaps them in."""
    shards = parquet_files(folder.data)
    if len(shards) <= 1 or len(shards) <= count_rows(folder.data) // min_rows_per_file + 1:
        return
    shutil.rmtree(folder.compact, ignore_errors=True)
    write_shards(read_written(folder.data), folder.compact, min_rows_per_file)
    with open(os.path.join(folder.compact, MARKER), "w", encoding="utf-8") as f:
        json.dump([os.path.basename(shard) for shard in shards], f)


def finish_compaction(folder: OutputFolder) -> None:
    """Swap compacted shards into `data/` if a compaction got as far as its marker; else drop them."""
    marker = os.path.join(folder.compact, MARKER)
    if not os.path.exists(marker):
        shutil.rmtree(folder.compact, ignore_errors=True)
        return
    with open(marker, encoding="utf-8") as f:
        replaced = json.load(f)
    for name in replaced:
        with contextlib.suppress(FileNotFoundError):  # removed before an earlier swap was cut short
            os.remove(os.path.join(folder.data, name))
    for shard in parquet_files(folder.compact):
        os.replace(shard, os.path.join(folder.data, os.path.basename(shard)))
    shutil.rmtree(folder.compact)
