"""The output folder: every path in it, read and written through one pyarrow filesystem, and the one
place Parquet shards are written.

Layout of `output.path` (a local folder, or any URI `pyarrow.fs.FileSystem.from_uri` opens):
    data/*.parquet      the rows, `output.columns` in order (the dataset config `all`)
    curated/NAME/       the curated subsets (`curation.subsets`, e.g. a4 and a5), rebuilt by every finished run
    README.md           the dataset card
    score_distribution.png
    run_summary.json    counts, scores, failures, tokens, timings; `"complete": true` marks a finished output
    .checkpoint/        Ray Data's checkpoint of written row ids while a run is unfinished
    .segments/          web jobs: every source row with its filter verdict and dedup keys, the duplicates,
                        and the filter counts (segments/filter_pass.py)
    .cache/STAGE/       the reply cache (cache.py): every finished reply, until the run completes
    .compact/           a finished run's shards while they are rewritten into few big ones (compaction.py)

Object stores have no atomic rename, so nothing here relies on one: a step is done when its marker,
a small file written last in one PUT, exists (`run_summary.json` with `complete`, the compaction
marker), and a reader looks at the marker first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.checkpoint import CheckpointConfig

from backtrans.config import OutputConfig
from backtrans.resources import AFTER_STAGES_CPUS, IO_CPUS, map_blocks
from backtrans.schema import ROW_HASH, BacktransError

SUMMARY_FILE = "run_summary.json"
CARD_FILE = "README.md"
PLOT_FILE = "score_distribution.png"
DATA_DIR = "data"
CURATED_DIR = "curated"
CACHE_DIR = ".cache"
COMPACT_MARKER = "_replaces.json"  # in .compact/: the shards the compacted ones replace, written after them
EMPTY_SHARD = "empty.parquet"


class OutputError(BacktransError):
    pass


def _inside(*parts: str) -> property:
    """A read-only `OutputFolder` attribute: the path of `parts` below its root."""
    return property(lambda folder: folder.path(*parts))


@dataclass(frozen=True)
class OutputFolder:
    """`root` is a path in `filesystem`'s own terms (absolute for a local folder, `bucket/prefix` for s3);
    `uri` names the folder for people (a local path, or the URI `output.path` gave)."""

    root: str
    filesystem: pafs.FileSystem
    uri: str

    @classmethod
    def at(cls, uri: str) -> OutputFolder:
        if "://" in uri:
            filesystem, root = pafs.FileSystem.from_uri(uri)
            return cls(root.rstrip("/"), filesystem, uri.rstrip("/"))
        root = os.path.abspath(os.path.expanduser(uri))
        return cls(root, pafs.LocalFileSystem(), root)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # The layout of the module docstring.
    data = _inside(DATA_DIR)
    checkpoint = _inside(".checkpoint")
    segments = _inside(".segments")
    segment_rows = _inside(".segments", "rows")
    segment_checkpoint = _inside(".segments", "checkpoint")
    segment_rules_done = _inside(".segments", "rules_done.json")
    segment_duplicates = _inside(".segments", "duplicates")
    segment_counts = _inside(".segments", "filter_counts.json")
    cache = _inside(CACHE_DIR)
    compact = _inside(".compact")
    compact_marker = _inside(".compact", COMPACT_MARKER)
    curated_root = _inside(CURATED_DIR)

    def curated(self, name: str) -> str:
        return self.path(CURATED_DIR, name)

    plot = _inside(PLOT_FILE)
    summary = _inside(SUMMARY_FILE)
    card = _inside(CARD_FILE)

    def relative(self, path: str) -> str:
        """`path` as seen from the root: its name in the Hub repo."""
        return path.removeprefix(self.root + "/")

    # --- files

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def write_bytes(self, path: str, data: bytes) -> None:
        """One whole-file write (one PUT on an object store): a reader sees the old file or the new one."""
        self._make_parent(path)
        with self.filesystem.open_output_stream(path) as f:
            f.write(data)

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def read_bytes(self, path: str) -> bytes:
        """Raises FileNotFoundError for a missing file."""
        with self.filesystem.open_input_stream(path) as f:
            return f.read()

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8")

    def open(self, path: str) -> pa.NativeFile:
        """A seekable file to read, e.g. to upload it."""
        return self.filesystem.open_input_file(path)

    def files(self, directory: str, suffix: str = "") -> list[str]:
        """Files directly in `directory` whose names end with `suffix`, in name order (none if it is missing)."""
        return [path for path in self._entries(directory, pafs.FileType.File) if path.endswith(suffix)]

    def folders(self, directory: str) -> list[str]:
        """Folders directly in `directory`, in name order."""
        return self._entries(directory, pafs.FileType.Directory)

    def _entries(self, directory: str, kind: pafs.FileType) -> list[str]:
        found = self.filesystem.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return sorted(info.path for info in found if info.type == kind)

    def parquet_files(self, directory: str) -> list[str]:
        return self.files(directory, ".parquet")

    def committed_checkpoint_files(self, checkpoint: str) -> list[str]:
        """The files of Ray Data's checkpoint at `checkpoint` whose rows are committed: Ray names a file
        `.pending.` until the write that holds its rows has finished (it removes both on the next run)."""
        return [path for path in self.parquet_files(checkpoint) if ".pending." not in path]

    def delete_file(self, path: str) -> None:
        """Remove a file; a missing one is no error (an earlier, cut-short run may have removed it)."""
        if self.exists(path):
            self.filesystem.delete_file(path)

    def delete_dir(self, directory: str) -> None:
        if self.exists(directory):
            self.filesystem.delete_dir(directory)

    def move(self, source: str, target: str) -> None:
        """Atomic on a local disk; a copy and a delete on an object store, so callers mark completion
        with a marker instead of relying on the move."""
        self._make_parent(target)
        self.filesystem.move(source, target)

    def _make_parent(self, path: str) -> None:
        # A local disk needs the folder; an object store has none, and creating one is a no-op there.
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)

    def prepare(self, mode: str) -> str:
        """Make the folder ready for a run that writes rows: "fresh" or "resume". (A complete output is
        told by its summary before this, see `summary.read_summary`.)"""
        if mode == "overwrite":
            # The reply cache stays: a cached reply is the reply to the same request (a re-score with
            # another judge takes the generations it holds).
            for path in self.files(self.root):
                self.delete_file(path)
            for path in self.folders(self.root):
                if path != self.cache:
                    self.delete_dir(path)
        if self.files(self.data) and not self.exists(self.checkpoint):
            raise OutputError(
                f"output.path {self.uri} holds data/ from an unknown run and no checkpoint; "
                "set output.mode=overwrite to replace it"
            )
        self.filesystem.create_dir(self.root, recursive=True)
        # A summary of an unfinished run is stale once this run writes more rows.
        self.delete_file(self.summary)
        return "resume" if self.files(self.data) else "fresh"

    # --- Parquet through Ray Data and pyarrow

    def read_written(self, directory: str) -> ray.data.Dataset:
        """Written Parquet shards as a Dataset, for the passes after the stages (compaction, subsets)."""
        return ray.data.read_parquet(directory, filesystem=self.filesystem, num_cpus=AFTER_STAGES_CPUS)

    def schema(self, directory: str) -> pa.Schema:
        """The schema of written shards, from the first one's footer."""
        return pq.read_schema(self.parquet_files(directory)[0], filesystem=self.filesystem)

    def scan_columns(self, directory: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """A few columns of written Parquet shards, streamed on the driver batch by batch.

        For counts over the output (scores, subset moves): a Ray Data execution costs ~2.5 s of
        scheduling on a small machine for work of milliseconds, and a column of a million scores is a
        few MB, read a batch at a time.
        """
        return self._dataset(directory).to_batches(columns=columns)

    def read_columns(self, directory: str, columns: list[str]) -> pa.Table:
        """A few columns of written Parquet shards, as one table (for a worker: narrow columns only)."""
        return self._dataset(directory).to_table(columns=columns)

    def count_rows(self, directory: str) -> int:
        """Rows in written Parquet shards, from their footers."""
        return self._dataset(directory).count_rows()

    def _dataset(self, directory: str) -> pads.Dataset:
        return pads.dataset(self.parquet_files(directory), format="parquet", filesystem=self.filesystem)


def checkpoint_config(folder: OutputFolder, path: str) -> CheckpointConfig:
    """Ray Data's checkpoint of written row ids at `path` in the folder. Kept after success so a re-run
    can tell finished rows from new ones; a marker (the summary, the segment pass's) says it is done."""
    return CheckpointConfig(
        id_column=ROW_HASH,
        checkpoint_path=path,
        override_filesystem=folder.filesystem,
        delete_checkpoint_on_success=False,
    )


def _without_row_hash(block: pa.Table) -> pa.Table:
    return block.drop_columns([ROW_HASH]) if ROW_HASH in block.column_names else block


def _keep_columns(batch: pa.Table, columns: list[str]) -> pa.Table:
    return batch.select(columns)


def write_rows(dataset: ray.data.Dataset, folder: OutputFolder, output: OutputConfig, columns: list[str]) -> None:
    """Keep `columns` (plus the id Ray's checkpointing needs) and write Parquet shards of
    `output.commit_rows` rows: Ray's checkpoint records a row when the write task holding it ends."""
    kept = map_blocks(dataset, _keep_columns, columns if ROW_HASH in columns else [*columns, ROW_HASH])
    # Only this plan is checkpointed: it starts with the Read and ends with the Write, as Ray requires.
    kept.context.checkpoint_config = checkpoint_config(folder, folder.checkpoint)
    write_parquet(kept, folder, folder.data, output.commit_rows, IO_CPUS, drop_row_hash=ROW_HASH not in columns)


def write_parquet(
    dataset: ray.data.Dataset,
    folder: OutputFolder,
    directory: str,
    min_rows_per_file: int,
    num_cpus: float = AFTER_STAGES_CPUS,
    *,
    drop_row_hash: bool = False,
    schema_if_empty: pa.Schema | None = None,
) -> None:
    """Every Parquet shard of the output is written here: `dataset` into `directory` in shards of at
    least `min_rows_per_file` rows, through the folder's filesystem.

    `drop_row_hash`: the checkpointed write must carry the resume id to its Write (Ray's checkpoint
    writer records each block's ids before the sink runs), but the shards keep it only when asked;
    Ray has no public option to drop a column inside the Write, so a ParquetDatasink subclass does.
    That is Ray's private API (`ParquetDatasink`, `Dataset._uuid`, which `Dataset.write_parquet`
    passes the same way), checked against Ray 2.60; it is used nowhere else.
    `schema_if_empty`: Ray writes no file for no rows; a Hub dataset config needs one, so an empty
    shard of this schema is written instead.
    """
    from ray.data._internal.datasource.parquet_datasink import ParquetDatasink

    class _WithoutRowHash(ParquetDatasink):
        def write(self, blocks: Iterable, ctx) -> None:
            super().write((_without_row_hash(block) for block in blocks), ctx)

    sink_class = _WithoutRowHash if drop_row_hash else ParquetDatasink
    sink = sink_class(
        directory, min_rows_per_file=min_rows_per_file, filesystem=folder.filesystem, dataset_uuid=dataset._uuid
    )
    dataset.write_datasink(sink, ray_remote_args={"num_cpus": num_cpus})
    if schema_if_empty is not None and not folder.parquet_files(directory):
        folder.filesystem.create_dir(directory, recursive=True)
        pq.write_table(schema_if_empty.empty_table(), f"{directory}/{EMPTY_SHARD}", filesystem=folder.filesystem)
