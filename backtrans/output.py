"""The output folder: `data/*.parquet` written by Ray Data, resumable through Ray's checkpointing.

Layout of `output.path`:
    data/*.parquet      the rows, `output.columns` in order (the dataset config `all`)
    curated/NAME/       the curated subsets (`curation.subsets`, e.g. a4 and a5), rebuilt by every finished run
    README.md           the dataset card
    score_distribution.png
    run_summary.json    counts, scores, failures, tokens, timings; `"complete": true` marks a finished output
    .checkpoint/        Ray Data's checkpoint of written row ids while a run is unfinished
    .segments/          web jobs: the filtered segments the LLM stages read, and the filter counts
    .compact/           a finished run's shards while they are rewritten into few big ones (compaction.py)
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import ray
from ray.data._internal.datasource.parquet_datasink import ParquetDatasink
from ray.data.checkpoint import CheckpointConfig

from backtrans.config import OutputConfig
from backtrans.jsonl_datasource import ROW_ID_COLUMN
from backtrans.resources import AFTER_STAGES_CPUS, IO_CPUS, map_blocks

SUMMARY_FILE = "run_summary.json"
CARD_FILE = "README.md"
PLOT_FILE = "score_distribution.png"
CURATED_DIR = "curated"


class OutputError(RuntimeError):
    pass


@dataclass(frozen=True)
class OutputFolder:
    root: str

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.root, ".checkpoint")

    @property
    def segments(self) -> str:
        return os.path.join(self.root, ".segments")

    @property
    def segment_rows(self) -> str:
        return os.path.join(self.segments, "rows")

    @property
    def segment_counts(self) -> str:
        return os.path.join(self.segments, "filter_counts.json")

    @property
    def compact(self) -> str:
        return os.path.join(self.root, ".compact")

    @property
    def plot(self) -> str:
        return os.path.join(self.root, PLOT_FILE)

    def curated(self, name: str) -> str:
        return os.path.join(self.root, CURATED_DIR, name)

    @property
    def summary(self) -> str:
        return os.path.join(self.root, SUMMARY_FILE)

    @property
    def card(self) -> str:
        return os.path.join(self.root, CARD_FILE)

    def is_complete(self) -> bool:
        try:
            with open(self.summary, encoding="utf-8") as f:
                return bool(json.load(f).get("complete"))
        except (FileNotFoundError, ValueError):
            return False

    def prepare(self, mode: str) -> str:
        """Decide what this run does with the folder: "skip", "resume" or "fresh"."""
        if mode == "overwrite" and os.path.exists(self.root):
            shutil.rmtree(self.root)
        if self.is_complete():
            return "skip"
        has_data = os.path.isdir(self.data) and any(os.scandir(self.data))
        if has_data and not os.path.isdir(self.checkpoint):
            raise OutputError(
                f"output.path {self.root} holds data/ from an unknown run and no checkpoint; "
                "set output.mode=overwrite to replace it"
            )
        os.makedirs(self.root, exist_ok=True)
        # A summary of an unfinished run is stale once this run writes more rows.
        if os.path.exists(self.summary):
            os.remove(self.summary)
        return "resume" if has_data else "fresh"


def checkpoint_config(folder: OutputFolder) -> CheckpointConfig:
    # Kept after success so a re-run can tell finished rows from new ones; the summary marks completion.
    return CheckpointConfig(
        id_column=ROW_ID_COLUMN, checkpoint_path=folder.checkpoint, delete_checkpoint_on_success=False
    )


class _ParquetWithoutRowIds(ParquetDatasink):
    """Parquet shards without the resume id, unless the user asked for it in `output.columns`.

    Ray's checkpoint writer records each block's ids before this sink runs, so the id column must
    reach the Write; this drops it at the last moment (Ray has no public option for that).
    """

    def write(self, blocks: Iterable, ctx) -> None:
        super().write((_drop_row_id(block) for block in blocks), ctx)


def _drop_row_id(block: pa.Table) -> pa.Table:
    return block.drop_columns([ROW_ID_COLUMN]) if ROW_ID_COLUMN in block.column_names else block


def _keep_columns(batch: pa.Table, columns: list[str]) -> pa.Table:
    return batch.select(columns)


def write_rows(dataset: ray.data.Dataset, folder: OutputFolder, output: OutputConfig) -> None:
    """Keep `output.columns` (plus the id Ray's checkpointing needs) and write Parquet shards of
    `output.commit_rows` rows: Ray's checkpoint records a row when the write task holding it ends."""
    columns = list(output.columns)
    if ROW_ID_COLUMN not in columns:
        columns.append(ROW_ID_COLUMN)
    kept = map_blocks(dataset, _keep_columns, columns)
    # Only this plan is checkpointed: it starts with the Read and ends with the Write, as Ray requires.
    kept.context.checkpoint_config = checkpoint_config(folder)
    sink_class = ParquetDatasink if ROW_ID_COLUMN in output.columns else _ParquetWithoutRowIds
    sink = sink_class(folder.data, min_rows_per_file=output.commit_rows, dataset_uuid=kept._uuid)
    kept.write_datasink(sink, ray_remote_args={"num_cpus": IO_CPUS})


def read_written(directory: str) -> ray.data.Dataset:
    """Written Parquet shards as a Dataset, for the passes after the stages (compaction, subsets)."""
    return ray.data.read_parquet(directory, num_cpus=AFTER_STAGES_CPUS)


def write_shards(dataset: ray.data.Dataset, directory: str, min_rows_per_file: int) -> None:
    """Write a pass after the stages as Parquet shards of at least `min_rows_per_file` rows."""
    dataset.write_parquet(
        directory, min_rows_per_file=min_rows_per_file, ray_remote_args={"num_cpus": AFTER_STAGES_CPUS}
    )


def parquet_files(directory: str) -> list[str]:
    """The Parquet shards in a folder, in name order (none if the folder does not exist)."""
    return sorted(glob.glob(os.path.join(directory, "*.parquet")))


def scan_columns(directory: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A few columns of written Parquet shards, streamed on the driver batch by batch.

    For counts over the output (scores, subset moves): a Ray Data execution costs ~2.5 s of
    scheduling on a small machine for work of milliseconds, and a column of a million scores is a
    few MB, read a batch at a time.
    """
    return pads.dataset(directory, format="parquet").to_batches(columns=columns)


def count_rows(directory: str) -> int:
    """Rows in written Parquet shards, from their footers."""
    return pads.dataset(directory, format="parquet").count_rows()
