"""The LLM stages: async callable classes that Ray Data runs with `map_batches` on an actor pool.

A stage knows nothing about files. It takes a pyarrow batch, sends one request per row (at most
`slots` at once in this actor), and returns the batch with its output columns added. Like
distilabel's Task, a stage renders a row into a prompt (`format_input`) and reads the reply into its
output columns (`format_output`); the base class does the rest. A row that fails keeps its place
with null outputs and a record in the `error` column; rows that an earlier stage failed are passed
through without a request.

The endpoint and the metrics sink are constructor arguments with defaults (the stage's backend,
the run's metrics actor), so a stage runs in a test with a fake endpoint and no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from backtrans import schema
from backtrans.backends import Reply, RequestOptions, backend_for
from backtrans.cache import FLUSH_INTERVAL_S, ReplyCache
from backtrans.config import StageConfig
from backtrans.endpoints import ChatEndpoint, EndpointFailure
from backtrans.errors import Secret, one_line
from backtrans.metrics import StageCounts, StopReason
from backtrans.output import OutputFolder
from backtrans.parse import VERDICT_SCHEMA, json_verdict, parse_verdict, score_distribution
from backtrans.prompts import load_template, render
from backtrans.schema import BacktransError

GAUGE_INTERVAL_S = 2.0  # how often an actor reports its requests in flight


@dataclass(frozen=True)
class StageSpec:
    """Everything an actor needs to build its stage; small and picklable, its repr shows no key."""

    name: str  # config section: "augment" | "generate" | "score"
    config: StageConfig
    base_url: str | None
    template_path: str
    metrics_actor: str  # name of the RunMetrics actor
    output_path: str | None = None  # `output.path`, where the reply cache lives; None: no cache
    api_key: Secret | None = None  # read on the driver: the actors' nodes may not have it in their environment


@dataclass(frozen=True)
class RowFailure:
    """Why a row has no outputs. `keep` holds the outputs it keeps anyway (the raw reply of an
    unparseable score), by output column."""

    type: str
    message: str
    attempts: int = 0
    keep: Mapping[str, object] = field(default_factory=dict)


class MetricsSink(Protocol):
    """Where a stage reports (the run's RunMetrics actor; a plain object in tests)."""

    def add(self, stage: str, counts: StageCounts) -> None: ...

    def gauge(self, stage: str, actor_id: str, in_flight: int) -> None: ...

    async def stop(self, reason: StopReason) -> None: ...


class RemoteMetrics:
    """The RunMetrics actor as a MetricsSink: counts and gauges are sent without waiting; a stop is
    awaited, so it is recorded before the stage's exception can reach the driver."""

    def __init__(self, actor_name: str):
        import ray

        self._actor = ray.get_actor(actor_name)

    def add(self, stage: str, counts: StageCounts) -> None:
        self._actor.add.remote(stage, counts)

    def gauge(self, stage: str, actor_id: str, in_flight: int) -> None:
        self._actor.gauge.remote(stage, actor_id, in_flight)

    async def stop(self, reason: StopReason) -> None:
        await self._actor.stop.remote(reason)


def default_endpoint(spec: StageSpec) -> ChatEndpoint:
    api_key = spec.api_key.reveal() if spec.api_key is not None else None
    client = backend_for(spec.config).connect(spec.name, spec.config, spec.base_url, api_key)
    return ChatEndpoint(spec.name, spec.config, client)


class LLMStage:
    """Shared mechanics; subclasses name their input and output columns and implement `format_output`."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()  # output columns; their types are schema.OUTPUT_TYPES'
    request_options: RequestOptions | None = None  # what every request asks beyond the prompt

    def __init__(self, spec: StageSpec, endpoint: ChatEndpoint | None = None, metrics: MetricsSink | None = None):
        self.spec = spec
        self.template = load_template(spec.template_path)
        # Built here, not on the first batch: importing and building the client costs seconds of CPU
        # that would otherwise stall the event loop. asyncio primitives bind to a loop on first use.
        self.endpoint = endpoint or default_endpoint(spec)
        self.metrics = metrics or RemoteMetrics(spec.metrics_actor)
        folder = OutputFolder.at(spec.output_path) if spec.output_path else None
        # This actor's share of the stage's in flight: the most finished replies it holds unwritten.
        share = spec.config.max_concurrency // (spec.config.actors or 1)
        self.cache = ReplyCache(folder, spec.name, spec.config, share)
        self.actor_id = uuid.uuid4().hex
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop Ray Data runs this actor's batches on
        self._timers: list[asyncio.Task] = []
        self._cpu_counted = time.process_time()  # this process's CPU already in a batch's counts

    def __del__(self):
        # Ray Data drops the stage when its pool shuts down: a last gauge, so the run's in-flight
        # figure does not keep this actor's stale count, and close the client's connections on the
        # loop that opened them (aiohttp warns about every session left open).
        with contextlib.suppress(Exception):  # also when __init__ failed half-way
            self.metrics.gauge(self.spec.name, self.actor_id, self.endpoint.in_flight)
            self.cache.flush()
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=5)

    async def _close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.cache.flush()
        await self.endpoint.close()

    async def _report_in_flight(self) -> None:
        # On a timer, not per request: one Ray call per actor every GAUGE_INTERVAL_S.
        while True:
            self.metrics.gauge(self.spec.name, self.actor_id, self.endpoint.in_flight)
            await asyncio.sleep(GAUGE_INTERVAL_S)

    async def _flush_cache(self) -> None:
        # A slow stage never fills `flush_rows`: its replies are written at least this often.
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.cache.flush_if_due()

    def format_input(self, row: Mapping[str, str]) -> str:
        """The prompt for a row of this stage's input columns."""
        return render(self.template, **row)

    def format_output(self, reply: Reply, row: Mapping[str, str]) -> dict | RowFailure:
        """The row's outputs by column, read from the reply, or why the reply is of no use."""
        raise NotImplementedError

    def _check_inputs(self, row: Mapping[str, str | None]) -> RowFailure | None:
        for column, text in row.items():
            if text is None or not str(text).strip():
                return RowFailure("bad_input", f"{column} is empty")
            if len(text) > self.spec.config.max_input_chars:
                return RowFailure(
                    "bad_input",
                    f"{column} has {len(text)} chars, over max_input_chars={self.spec.config.max_input_chars}",
                )
        return None

    async def _row(self, row: Mapping[str, str | None], counts: StageCounts) -> dict | RowFailure:
        failure = self._check_inputs(row)
        if failure is not None:
            return failure
        try:
            return await self._answer(row, self.format_input(row), counts)
        except EndpointFailure as error:
            return RowFailure(error.error_type, error.message, error.attempts)

    async def _answer(
        self, row: Mapping[str, str], prompt: str, counts: StageCounts, ask: int = 1
    ) -> dict | RowFailure:
        return self.format_output(await self._ask(prompt, counts, ask), row)

    async def _ask(self, prompt: str, counts: StageCounts, ask: int = 1) -> Reply:
        """The reply from the cache, or from the endpoint and then cached. `ask`: which ask of this
        prompt it is (a re-asked prompt is another request, with its own reply)."""
        key = self.cache.key(prompt, ask)
        if (cached := self.cache.get(key)) is not None:
            counts.cache_hits += 1
            return cached
        try:
            reply, attempts = await self.endpoint.complete(prompt, self.request_options)
        except EndpointFailure as error:
            counts.requests += error.attempts
            counts.retries += error.attempts - 1
            raise
        counts.requests += attempts
        counts.retries += attempts - 1
        counts.prompt_tokens += reply.prompt_tokens
        counts.completion_tokens += reply.completion_tokens
        self.cache.put(key, reply)
        return reply

    def _failure_row(self, failure: RowFailure) -> dict:
        return {**dict.fromkeys(self.outputs), **failure.keep}

    def _send_counts(self, counts: StageCounts) -> None:
        # With the process's CPU since the last batch that counted it (every thread: the event loop's
        # and Ray's): batches run side by side, so a batch's own CPU cannot be told apart.
        now = time.process_time()
        counts.cpu_s, self._cpu_counted = now - self._cpu_counted, now
        self.metrics.add(self.spec.name, counts)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._timers = [self._loop.create_task(timer()) for timer in (self._report_in_flight, self._flush_cache)]
        columns = {name: batch.column(name).to_pylist() for name in self.inputs}
        earlier = batch.column(schema.ERROR).to_pylist() if schema.ERROR in batch.column_names else [None] * len(batch)
        counts = StageCounts(rows=len(batch))

        async def skipped():
            return None

        # Every row runs to its end, even after one stops the run: requests already sent are paid
        # for and must be counted (budgets hold across re-runs); the others stop at the budget check.
        results = await asyncio.gather(
            *(
                skipped() if earlier[i] is not None else self._row({c: columns[c][i] for c in self.inputs}, counts)
                for i in range(len(batch))
            ),
            return_exceptions=True,
        )
        stops = [result for result in results if isinstance(result, BaseException)]
        if stops:
            self.cache.flush()  # the replies paid for before the stop, before Ray Data ends this actor
            self._send_counts(counts)
            error = next((stop for stop in stops if isinstance(stop, BacktransError)), stops[0])
            if isinstance(error, BacktransError):  # BudgetExhausted, StageDown: the driver reads why
                budget = getattr(error, "budget", None)
                reason = StopReason(self.spec.name, type(error).__name__, one_line(error), error.resumable, budget)
                await self.metrics.stop(reason)
            raise error
        rows, errors = [], list(earlier)
        for i, result in enumerate(results):
            if isinstance(result, RowFailure):
                errors[i] = {"stage": self.spec.name, "type": result.type, "message": result.message,
                             "attempts": result.attempts}  # fmt: skip
                counts.failures[result.type] += 1
                result = self._failure_row(result)
            rows.append(result or dict.fromkeys(self.outputs))
        self._send_counts(counts)
        for name in self.outputs:
            values = pa.array([row[name] for row in rows], type=schema.OUTPUT_TYPES[name])
            batch = _set_column(batch, name, values)
        return _set_column(batch, schema.ERROR, pa.array(errors, type=schema.ERROR_TYPE))


def _set_column(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, values)
    return batch.append_column(name, values)


class GenerateStage(LLMStage):
    """Writes a response for each instruction (the seed pipeline's TextGeneration)."""

    inputs = (schema.INSTRUCTION,)
    outputs = (schema.GENERATION, schema.GENERATION_MODEL)

    def format_output(self, reply: Reply, row: Mapping[str, str]) -> dict | RowFailure:
        return {schema.GENERATION: reply.text, schema.GENERATION_MODEL: self.spec.config.model}


class AugmentStage(LLMStage):
    """Writes an instruction for each segment (the paper's self-augmentation, by the backward model)."""

    inputs = (schema.GENERATION,)
    outputs = (schema.INSTRUCTION, schema.INSTRUCTION_MODEL)

    def format_output(self, reply: Reply, row: Mapping[str, str]) -> dict | RowFailure:
        instruction = reply.text.strip()
        problem = instruction_problem(instruction, row[schema.GENERATION], self.spec.config.max_instruction_chars)
        return problem or {schema.INSTRUCTION: instruction, schema.INSTRUCTION_MODEL: self.spec.config.model}


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def instruction_problem(instruction: str, segment: str, max_chars: int) -> RowFailure | None:
    """Why a written instruction cannot be used: empty, over-long, or a copy of the segment."""
    if not instruction:
        return RowFailure("bad_instruction", "the backward model wrote an empty instruction", 1)
    if len(instruction) > max_chars:
        return RowFailure(
            "bad_instruction", f"the written instruction has {len(instruction)} chars, over {max_chars}", 1
        )
    written, text = _normalized(instruction), _normalized(segment)
    # A copy: the whole segment repeated, or most of the instruction lifted from the segment verbatim.
    if text in written or (len(written) > len(text) // 2 and written in text):
        return RowFailure("bad_instruction", "the written instruction copies the segment", 1)
    return None


# score.method logprobs: the most alternatives OpenAI returns, and vLLM's default limit.
TOP_LOGPROBS = 20
SCORE_OPTIONS = {
    "parse": None,
    "logprobs": RequestOptions(top_logprobs=TOP_LOGPROBS),
    "json": RequestOptions(json_schema=VERDICT_SCHEMA),
}
REASKED = ("unparseable_score", "invalid_verdict")  # what a second ask may fix; a truncation would recur


class NoLogprobs(BacktransError):
    """score.method logprobs against a server that returns none: every row would silently fall back to
    parsing, so the run stops at the first reply instead."""


class ScoreStage(LLMStage):
    """Rates each (instruction, generation) pair with the self-curation prompt and reads the verdict
    the way `score.method` says: the reply's text, the probabilities at its score token, or JSON."""

    inputs = (schema.INSTRUCTION, schema.GENERATION)
    outputs = (schema.SCORE, schema.REASON, schema.SCORING_MODEL, schema.SCORE_EXPECTED, schema.SCORE_PROBS)

    @property
    def request_options(self) -> RequestOptions | None:
        return SCORE_OPTIONS[self.spec.config.method]

    def format_output(self, reply: Reply, row: Mapping[str, str]) -> dict | RowFailure:
        method = self.spec.config.method
        raw = dict.fromkeys(self.outputs) | {schema.REASON: reply.text, schema.SCORING_MODEL: self.spec.config.model}
        if reply.finish_reason == "length":
            message = "the reply was cut at the token limit; raise generation_kwargs.max_new_tokens"
            return RowFailure("truncated", message, 1, keep=raw)
        if method == "json":
            verdict = json_verdict(reply.text)
            if verdict is None:
                message = "the reply is not a {reason, score} verdict under the JSON schema; raw reply kept in reason"
                return RowFailure("invalid_verdict", message, 1, keep=raw)
            return {**raw, schema.SCORE: verdict.score, schema.REASON: verdict.reason}
        verdict = parse_verdict(reply.text)
        values = {**raw, schema.SCORE: verdict.score, schema.REASON: verdict.reason}
        if method == "logprobs":
            if reply.logprobs is None:
                where = self.spec.base_url or "the server"
                raise NoLogprobs(
                    f"score.method logprobs: {where} returned no logprobs; use a server that does (OpenAI, vLLM, TGI) "
                    "or score.method parse or json"
                )
            probs = score_distribution(reply.logprobs)
            if probs is not None:  # else: no score token, the text's score stands
                values[schema.SCORE] = 1 + probs.index(max(probs))
                values[schema.SCORE_EXPECTED] = sum((i + 1) * p for i, p in enumerate(probs))
                values[schema.SCORE_PROBS] = list(probs)
        if values[schema.SCORE] is None:
            message = "the reply has no Score: 1-5 line; raw reply kept in reason"
            return RowFailure("unparseable_score", message, 1, keep=values)
        return values

    async def _answer(
        self, row: Mapping[str, str], prompt: str, counts: StageCounts, ask: int = 1
    ) -> dict | RowFailure:
        result = await super()._answer(row, prompt, counts)
        if isinstance(result, RowFailure) and result.type in REASKED and self.spec.config.reask_unparseable:
            return await super()._answer(row, prompt, counts, ask=2)  # once: a judge that never scores costs 2x
        return result
