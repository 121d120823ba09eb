"""A Ray Data datasource for JSON Lines that gives every row a stable id and reports bad lines.

Hand-written because Ray's own `read_json` offers neither: it has no per-row id (checkpointing
needs one in the Read's own output, before any map) and a malformed line fails the read without
saying which file and line. The id is a uint64 hash of the file path and the line number, in the
column `row_hash`, the same name and type `read_parquet(include_row_hash=True)` gives Parquet rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator

import pyarrow as pa
import ray
from ray.data.datasource import FileBasedDatasource

from backtrans.schema import BacktransError

ROW_ID_COLUMN = "row_hash"
# Rows are parsed and handed to Ray in tables of this many, so a big file streams. (Ray's read task
# merges them into blocks of up to the plan's target block size, see sources.SOURCE_BLOCK_BYTES.)
ROWS_PER_BLOCK = 64

logger = logging.getLogger(__name__)


class BadLineError(BacktransError, ValueError):
    """A JSONL line that is not UTF-8 or not a JSON object; the message names the file and line."""


def row_id(path: str, line_number: int) -> int:
    digest = hashlib.blake2b(f"{path}\n{line_number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class JsonlDatasource(FileBasedDatasource):
    _FILE_EXTENSIONS = ["jsonl", "json", "jsonl.gz", "json.gz"]

    def __init__(self, paths, *, bad_lines: str = "fail", metrics_actor: str | None = None, **file_based_kwargs):
        super().__init__(paths, **file_based_kwargs)
        self._bad_lines = bad_lines
        self._metrics_actor = metrics_actor  # the run's RunMetrics actor, told how many lines were skipped

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows: list[dict] = []
        ids: list[int] = []
        skipped: list[str] = []
        for line_number, record in records(f, path, self._bad_lines, skipped):
            rows.append(record)
            ids.append(row_id(path, line_number))
            if len(rows) == ROWS_PER_BLOCK:
                yield _block(rows, ids)
                rows, ids = [], []
        if rows:
            yield _block(rows, ids)
        if skipped and self._metrics_actor:
            ray.get(ray.get_actor(self._metrics_actor).skipped.remote(skipped))


def records(f: pa.NativeFile, path: str, bad_lines: str, skipped: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line. A malformed line raises BadLineError under
    `bad_lines: fail`; under `skip` it is logged and its `path:line` appended to `skipped`."""
    for line_number, raw in enumerate(_lines(f), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except (UnicodeDecodeError, ValueError) as error:
            message = f"{path}:{line_number}: malformed JSONL line ({str(error).splitlines()[0]})"
            if bad_lines == "fail":
                raise BadLineError(message) from None
            logger.warning("skipped %s", message)
            skipped.append(f"{path}:{line_number}")
            continue
        yield line_number, record


def _block(rows: list[dict], ids: list[int]) -> pa.Table:
    table = pa.Table.from_pylist(rows)
    if ROW_ID_COLUMN in table.column_names:
        table = table.drop_columns([ROW_ID_COLUMN])
    return table.append_column(ROW_ID_COLUMN, pa.array(ids, type=pa.uint64()))


def _lines(f: pa.NativeFile) -> Iterator[bytes]:
    # Read in chunks so a multi-GB file streams instead of landing in memory at once.
    pending = b""
    while chunk := f.read(1 << 20):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending
