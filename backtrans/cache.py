"""The reply cache: every finished reply is kept in the output folder, so no request is paid twice.

Like datatrove's request cache, but on the output's filesystem (a local folder or an object store),
so it survives a killed driver, a `ray job stop`, a lost node or a budget stop, and serves any node.

Layout: `OUTPUT/.cache/STAGE/ACTOR-SEQ.parquet`, rows of (`schema.CACHE_KEY`, `schema.CACHE_REPLY`: the
`Reply` as JSON, so a field added to `Reply` needs no new shard format). Each stage actor
writes its own small shards, each a whole object in one PUT (object stores cannot append), and
loads every shard of its stage when it starts. A reply is written before more than `flush_rows`
finished replies (the actor's share of `max_concurrency`) or `FLUSH_INTERVAL_S` wait in memory, so a
kill loses at most the requests in flight plus as many finished ones: 2 x `max_concurrency` per stage.
Once written, a reply of this run leaves the actor's memory and only its key stays: holding every
reply would grow each actor by a reply's text per row (bench/analysis.md).

The key is a hash over everything that makes the request what it is: the stage, the stage config
less the keys that only pace or route requests (a new request option is in the key by default), the
rendered prompt and which ask of the prompt this is (a re-asked unparseable score is a new request).
A re-score with another judge therefore misses on `score` and hits on an unchanged `generate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from backtrans.backends import Reply
from backtrans.backends.base import TokenLogprobs
from backtrans.config import StageConfig
from backtrans.output import OutputFolder
from backtrans.schema import CACHE_KEY, CACHE_REPLY

FLUSH_INTERVAL_S = 1.0
# Keys that change how requests are paced, budgeted, retried or routed, never what is asked.
NOT_IN_KEY = frozenset(
    {
        "base_url",  # the simulator's port changes every run; the model id names what answers
        "api_key_env",
        "max_concurrency",
        "requests_per_minute",
        "tokens_per_minute",
        "max_requests",
        "max_tokens",
        "failure_window",
        "failure_threshold",
        "reask_unparseable",
        "timeout_s",
        "max_retries",
        "actors",
        "max_input_chars",
        "template",  # the rendered prompt is in the key
        "price",
    }
)


def request_prefix(stage_name: str, stage: StageConfig) -> bytes:
    """The part of every key of a stage that its config makes (dumped once per actor, not per request)."""
    request = {k: v for k, v in stage.model_dump(mode="json").items() if k not in NOT_IN_KEY}
    return json.dumps([stage_name, request], sort_keys=True, separators=(",", ":")).encode()


def request_key(stage_name: str, stage: StageConfig, prompt: str, ask: int = 1) -> str:
    return _key(request_prefix(stage_name, stage), prompt, ask)


def _key(prefix: bytes, prompt: str, ask: int) -> str:
    return hashlib.sha256(prefix + json.dumps([prompt, ask]).encode()).hexdigest()


def stage_dir(folder: OutputFolder, stage_name: str) -> str:
    return f"{folder.cache}/{stage_name}"


def load_replies(folder: OutputFolder, stage_name: str) -> dict[str, Reply]:
    """Every reply the stage's actors wrote to this output, by request key."""
    replies = {}
    for path in folder.parquet_files(stage_dir(folder, stage_name)):
        table = pq.read_table(path, filesystem=folder.filesystem)
        for key, reply in zip(table.column(CACHE_KEY).to_pylist(), table.column(CACHE_REPLY).to_pylist(), strict=True):
            with contextlib.suppress(TypeError):  # written by a version whose Reply had other fields: a miss
                replies[key] = _reply_from_json(reply)
    return replies


def compact(folder: OutputFolder, stage_name: str) -> None:
    """Merge a stage's shards into one before its actors start, so each loads one object instead
    of one per flush of every earlier run. The merged shard is written before the old ones go: a
    kill in between leaves duplicates, which load as one."""
    directory = stage_dir(folder, stage_name)
    shards = folder.parquet_files(directory)
    if len(shards) < 2:
        return
    replies = load_replies(folder, stage_name)
    _write(folder, f"{directory}/merged-{uuid.uuid4().hex}.parquet", replies)
    for path in shards:
        folder.delete_file(path)


def _reply_to_json(reply: Reply) -> str:
    return json.dumps(dataclasses.asdict(reply))


def _reply_from_json(text: str) -> Reply:
    fields = json.loads(text)
    if fields.get("logprobs") is not None:  # the scoring method `logprobs` reads them from cached replies too
        fields["logprobs"] = tuple(TokenLogprobs(**token) for token in fields["logprobs"])
    return Reply(**fields)


def _read_reply(folder: OutputFolder, path: str, key: str) -> Reply:
    table = pq.read_table(path, filesystem=folder.filesystem, filters=[(CACHE_KEY, "=", key)])
    return _reply_from_json(table.column(CACHE_REPLY)[0].as_py())


def _write(folder: OutputFolder, path: str, replies: dict[str, Reply]) -> None:
    table = pa.table({CACHE_KEY: list(replies), CACHE_REPLY: [_reply_to_json(reply) for reply in replies.values()]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    folder.write_bytes(path, sink.getvalue().to_pybytes())  # one whole object


class ReplyCache:
    """One stage actor's view of the cache: look up before sending, keep every reply after."""

    def __init__(self, folder: OutputFolder | None, stage_name: str, stage: StageConfig, flush_rows: int):
        self.folder = folder  # None: no cache (a stage built without an output, in tests)
        self.stage_name = stage_name
        self.flush_rows = max(1, flush_rows)
        self.replies = load_replies(folder, stage_name) if folder is not None else {}  # earlier runs'
        self._pending: dict[str, Reply] = {}
        self._written: dict[str, str] = {}  # this actor's written replies: key -> the shard that holds it
        self._flushed = time.monotonic()
        self._prefix = uuid.uuid4().hex
        self._key_prefix = request_prefix(stage_name, stage)
        self._shards = 0

    def key(self, prompt: str, ask: int = 1) -> str:
        return _key(self._key_prefix, prompt, ask)

    def get(self, key: str) -> Reply | None:
        reply = self.replies.get(key) or self._pending.get(key)
        if reply is None and key in self._written:  # a prompt asked again in this run: rare, one read
            reply = _read_reply(self.folder, self._written[key], key)
        return reply

    def put(self, key: str, reply: Reply) -> None:
        if self.folder is None:
            return
        self._pending[key] = reply
        if len(self._pending) >= self.flush_rows:
            self.flush()

    def flush_if_due(self) -> None:
        if time.monotonic() - self._flushed >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Write the pending replies as one shard. Synchronous on purpose: nothing else runs on the
        actor's loop meanwhile, so at most `flush_rows` finished replies are ever unwritten."""
        self._flushed = time.monotonic()
        if not self._pending:
            return
        self._shards += 1
        path = f"{stage_dir(self.folder, self.stage_name)}/{self._prefix}-{self._shards:06d}.parquet"
        _write(self.folder, path, self._pending)
        self._written.update(dict.fromkeys(self._pending, path))
        self._pending = {}
