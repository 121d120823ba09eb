"""Turn `source:` into a Ray Dataset whose rows are read on the workers, each with a stable id.

- `hf://datasets/OWNER/NAME` + `split`: the `datasets` library decides which files make up the
  split (file-name patterns, or `configs:` in the dataset card), then Ray reads those files through
  `huggingface_hub.HfFileSystem`, so no row passes through the driver.
- `hf://datasets/OWNER/NAME/some/path*.parquet`: those files, as given.
- local files, folders and globs, or any URI Ray reads (`s3://...`), of Parquet or JSON Lines.

Row ids live in `row_hash` (uint64, from the file path and the row's position in it). Ray Data's
checkpointing filters on it right after the Read, so it must come out of the Read itself.
Every row also gets `row_id`, a copy of that id which an output can keep (`output.columns`): it
stays with the row when the output is read again, e.g. to re-score it, while `row_hash` is made
anew by every read. A source that already has `row_id` keeps its own.
"""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from itertools import islice

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from backtrans.config import SourceConfig
from backtrans.jsonl_datasource import ROW_ID_COLUMN, ROWS_PER_BLOCK, JsonlDatasource, records
from backtrans.resources import IO_CPUS, map_blocks
from backtrans.schema import BacktransError

HF_PREFIX = "hf://"
# Sources come in blocks of up to this many bytes (~64 rows of web text) instead of Ray's 128 MiB:
# a block is the unit the stages stream and the checkpoint records, so a killed run re-pays for at
# most the blocks in flight, even a single file feeds every actor, and the first requests go out
# once the first block is read, not the whole first file.
SOURCE_BLOCK_BYTES = 128 * 1024
PARQUET_SUFFIXES = (".parquet",)
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


class SourceError(BacktransError, ValueError):
    """The source cannot be read as configured; the message names the URI, split or column."""


@dataclass(frozen=True)
class ResolvedFiles:
    paths: list[str]  # as the filesystem below expects them
    filesystem: object | None  # a pyarrow (object stores) or fsspec (the Hub) filesystem; None: local files
    file_format: str  # "parquet" | "jsonl"


def _hub_filesystem():
    from huggingface_hub import HfFileSystem

    return HfFileSystem()


def _split_files_from_hub(repo_id: str, source: SourceConfig) -> list[str]:
    """Which files make up the split, decided by `datasets` itself (patterns, or the card's configs)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(repo_id, name=source.config_name, revision=source.revision)
    except Exception as error:  # the datasets library raises many types; all mean "cannot resolve"
        raise SourceError(f"source.uri hf://datasets/{repo_id}: {str(error).splitlines()[0]}") from None
    data_files = builder.config.data_files or {}
    if source.split not in data_files:
        raise SourceError(
            f"source.split {source.split!r} not found in hf://datasets/{repo_id}; "
            f"splits: {', '.join(sorted(map(str, data_files))) or 'none'}"
        )
    return [str(url) for url in data_files[source.split]]


def _format_of(paths: list[str], uri: str) -> str:
    formats = {
        "parquet" if p.endswith(PARQUET_SUFFIXES) else "jsonl" if p.endswith(JSON_SUFFIXES) else p for p in paths
    }
    if formats <= {"parquet"} or formats <= {"jsonl"}:
        return formats.pop()
    unknown = sorted(formats - {"parquet", "jsonl"})
    if unknown:
        raise SourceError(f"source.uri {uri}: unsupported file {unknown[0]} (use .parquet or .jsonl)")
    raise SourceError(f"source.uri {uri}: mixes Parquet and JSON Lines files; point it at one format")


def _local_files(uri: str) -> list[str]:
    path = os.path.expanduser(uri)
    if os.path.isdir(path):
        found = [os.path.join(root, f) for root, _, files in os.walk(path) for f in files]
        found = [f for f in found if f.endswith(PARQUET_SUFFIXES + JSON_SUFFIXES)]
    else:
        found = globlib.glob(path)
    if not found:
        raise SourceError(f"source.uri {uri}: no .parquet or .jsonl files found")
    return sorted(os.path.abspath(f) for f in found)


def _remote_files(filesystem: pafs.FileSystem, path: str, uri: str) -> list[str]:
    """A file, or the .parquet/.jsonl files under a folder, on an object store."""
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        return [path]
    inside = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    found = sorted(info.path for info in inside if info.path.endswith(PARQUET_SUFFIXES + JSON_SUFFIXES))
    if not found:
        raise SourceError(f"source.uri {uri}: no .parquet or .jsonl files found")
    return found


def _hub_files(hub_path: str) -> list[str]:
    """Files under an explicit Hub path: a file, a folder, or a glob."""
    fs = _hub_filesystem()
    if globlib.has_magic(hub_path):
        found = fs.glob(hub_path)
    elif fs.isfile(hub_path):
        found = [hub_path]
    else:
        found = [f for f in fs.find(hub_path) if f.endswith(PARQUET_SUFFIXES + JSON_SUFFIXES)]
    if not found:
        raise SourceError(f"source.uri hf://{hub_path}: no .parquet or .jsonl files found")
    return sorted(found)


def resolve_files(source: SourceConfig) -> ResolvedFiles:
    uri = source.uri
    if uri.startswith(HF_PREFIX + "datasets/"):
        repo_and_path = uri[len(HF_PREFIX + "datasets/") :].strip("/")
        parts = repo_and_path.split("/")
        if len(parts) < 2:
            raise SourceError(f"source.uri {uri}: expected hf://datasets/OWNER/NAME[/path]")
        if len(parts) == 2:
            paths = [url.removeprefix(HF_PREFIX) for url in _split_files_from_hub(repo_and_path, source)]
        else:
            paths = _hub_files(uri.removeprefix(HF_PREFIX))
        return ResolvedFiles(paths, _hub_filesystem(), _format_of(paths, uri))
    if "://" in uri:  # s3://, gs://, ...: listed here, so that every file is a read task of its own
        filesystem, path = pafs.FileSystem.from_uri(uri)
        paths = _remote_files(filesystem, path, uri)
        return ResolvedFiles(paths, filesystem, _format_of(paths, uri))
    paths = _local_files(uri)
    return ResolvedFiles(paths, None, _format_of(paths, uri))


def _read(
    files: ResolvedFiles, source: SourceConfig, metrics_actor: str | None = None, num_cpus: float = IO_CPUS
) -> ray.data.Dataset:
    # One read task per listed file, on whichever nodes are free,
    # streaming small blocks: Ray's default adds a `SplitBlocks` step that keeps the rename from
    # fusing into the read, and each task is one more worker process to start on a small machine;
    # the LLM stages, not the read, set the pace.
    tasks = {"num_cpus": num_cpus, "override_num_blocks": len(files.paths)}
    if files.file_format == "parquet":
        rows = ray.data.read_parquet(files.paths, filesystem=files.filesystem, include_row_hash=True, **tasks)
    else:
        jsonl = JsonlDatasource(
            files.paths, filesystem=files.filesystem, bad_lines=source.bad_lines, metrics_actor=metrics_actor
        )
        rows = ray.data.read_datasource(jsonl, **tasks)
    return in_small_blocks(rows)


def in_small_blocks(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """The same plan, split into blocks of SOURCE_BLOCK_BYTES (the setting stays with this plan)."""
    dataset.context.target_max_block_size = SOURCE_BLOCK_BYTES
    return dataset


def _first_row_ids(files: ResolvedFiles, source: SourceConfig) -> pa.Array:
    """Ids of the first `limit` rows in read order.

    A plain `Dataset.limit` after the read would, on resume, take the first N rows *not yet done*
    (the checkpoint filter runs first) and so grow the output on every re-run. Selecting by id keeps
    the same N rows on every run; only ids reach the driver, never rows.
    """
    ids_only = _read(files, source).select_columns([ROW_ID_COLUMN]).limit(source.limit)
    ids_only.context.execution_options.preserve_order = True
    return pa.array([row[ROW_ID_COLUMN] for row in ids_only.take_all()], type=pa.uint64())


def _keep_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch[ROW_ID_COLUMN], value_set=ids))


STABLE_ID_COLUMN = "row_id"


def _rename_and_id(batch: pa.Table, mapping: dict[str, str]) -> pa.Table:
    batch = batch.rename_columns([mapping.get(name, name) for name in batch.column_names])
    if STABLE_ID_COLUMN in batch.column_names:
        return batch
    return batch.append_column(STABLE_ID_COLUMN, batch[ROW_ID_COLUMN])


def read_source(
    source: SourceConfig,
    metrics_actor: str | None = None,
    files: ResolvedFiles | None = None,
    num_cpus: float = IO_CPUS,
) -> ray.data.Dataset:
    """The source as a lazy Dataset: read on the workers, `limit` applied by id, columns renamed,
    `row_id` added. JSONL lines skipped under `bad_lines: skip` are counted by `metrics_actor`.
    `files`: the source already resolved (for the Hub, resolving is several requests). `num_cpus`:
    each read task's; a map with the same CPUs after it runs in the same task (Ray fuses them)."""
    files = files or resolve_files(source)
    dataset = _read(files, source, metrics_actor, num_cpus)
    if source.limit is not None:
        dataset = map_blocks(dataset, _keep_ids, _first_row_ids(files, source), num_cpus=num_cpus)
    return map_blocks(dataset, _rename_and_id, source.rename, num_cpus=num_cpus)


def _first_file(files: ResolvedFiles) -> tuple[pafs.FileSystem, str]:
    """The source's first file, and a pyarrow filesystem that opens it."""
    if isinstance(files.filesystem, pafs.FileSystem):
        return files.filesystem, files.paths[0]
    if files.filesystem is not None:  # the Hub's fsspec filesystem
        return pafs.PyFileSystem(pafs.FSSpecHandler(files.filesystem)), files.paths[0]
    return pafs.FileSystem.from_uri(files.paths[0])


def source_columns(source: SourceConfig, files: ResolvedFiles | None = None) -> list[str]:
    """The columns `read_source` gives, told from the first file alone: its Parquet footer, or the
    keys of its first JSON Lines records. Read on the driver because a Ray Data schema probe of a
    JSONL source reads a whole file before the job starts (seconds per 100,000 lines)."""
    files = files or resolve_files(source)
    filesystem, path = _first_file(files)
    if files.file_format == "parquet":
        names = pq.read_schema(path, filesystem=filesystem).names
    else:
        with filesystem.open_input_stream(path, compression="detect") as f:
            first = [record for _, record in islice(records(f, path, source.bad_lines, []), ROWS_PER_BLOCK)]
        names = list(dict.fromkeys(key for record in first for key in record))
    columns = [source.rename.get(name, name) for name in names if name != ROW_ID_COLUMN] + [ROW_ID_COLUMN]
    return columns if STABLE_ID_COLUMN in columns else [*columns, STABLE_ID_COLUMN]


def require_columns(source: SourceConfig, files: ResolvedFiles, required: list[str]) -> list[str]:
    """Fail before any request when a column the stages need is missing (after `rename`);
    return the source's columns."""
    present = source_columns(source, files)
    for column in required:
        if column not in present:
            shown = ", ".join(name for name in present if name != ROW_ID_COLUMN) or "none"
            hint = (
                f" (map one onto it with source.rename: {{OLD: {column}}})"
                if column not in source.rename.values()
                else ""
            )
            raise SourceError(f"column {column!r} is missing from {source.uri}; columns: {shown}{hint}")
    return present
