"""The LLM stages: async callable classes that Ray Data runs with `map_batches` on an actor pool.

A stage knows nothing about files. It takes a pyarrow batch, sends one request per row (at most
`slots` at once in this actor), and returns the batch with its output columns added. A row that
fails keeps its place with null outputs and a record in the `error` column; rows that an earlier
stage failed are passed through without a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import pyarrow as pa
import ray

from backtrans.config import StageConfig
from backtrans.endpoints import ChatEndpoint, EndpointFailure, is_pushback, read_api_key
from backtrans.metrics import StageCounts
from backtrans.pacing import Gate
from backtrans.parse import parse_verdict
from backtrans.prompts import load_template, render

ERROR_COLUMN = "error"
ERROR_TYPE = pa.struct(
    [("stage", pa.string()), ("type", pa.string()), ("message", pa.string()), ("attempts", pa.int32())]
)


@dataclass(frozen=True)
class StageSpec:
    """Everything an actor needs to build its stage; small and picklable, holds no key."""

    name: str  # config section: "generate" | "score"
    config: StageConfig
    base_url: str | None
    template_path: str
    metrics_actor: str  # name of the RunMetrics actor


@dataclass(frozen=True)
class RowFailure:
    type: str
    message: str
    attempts: int = 0


class LLMStage:
    """Shared mechanics; subclasses name their input columns and turn a reply into output values."""

    inputs: tuple[str, ...] = ()
    outputs: dict[str, pa.DataType] = {}

    def __init__(self, spec: StageSpec):
        self.spec = spec
        self.template = load_template(spec.template_path)
        # Built here, not on the first batch: importing and building the client costs seconds of CPU
        # that would otherwise stall the event loop. asyncio primitives bind to a loop on first use.
        gate = Gate(spec.name, spec.config, spec.config.actors, is_pushback)
        api_key = read_api_key(spec.config, spec.name)
        self.endpoint = ChatEndpoint(spec.config, spec.base_url, api_key, gate, stage_name=spec.name)
        self.metrics = ray.get_actor(spec.metrics_actor)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop Ray Data runs this actor's batches on

    def __del__(self):
        # Ray Data drops the stage when its pool shuts down; close the client's connections on the loop
        # that opened them (aiohttp warns about every session left open).
        if self._loop is not None and self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.endpoint.close(), self._loop).result(timeout=5)

    def outputs_for(self, reply_text: str) -> tuple[list, RowFailure | None]:
        raise NotImplementedError

    def _check_inputs(self, values: dict[str, str | None]) -> RowFailure | None:
        for column, text in values.items():
            if text is None or not str(text).strip():
                return RowFailure("bad_input", f"{column} is empty")
            if len(text) > self.spec.config.max_input_chars:
                return RowFailure(
                    "bad_input",
                    f"{column} has {len(text)} chars, over max_input_chars={self.spec.config.max_input_chars}",
                )
        return None

    async def _row(self, values: dict[str, str | None], counts: StageCounts) -> tuple[list, RowFailure | None]:
        failure = self._check_inputs(values)
        if failure is not None:
            return [None] * len(self.outputs), failure
        prompt = render(self.template, **values)
        try:
            reply = await self._ask(prompt, counts)
            outputs, failure = self.outputs_for(reply.text)
            if failure is not None and failure.type == "unparseable_score" and self.spec.config.reask_unparseable:
                outputs, failure = self.outputs_for((await self._ask(prompt, counts)).text)
        except EndpointFailure as error:
            return [None] * len(self.outputs), RowFailure(error.error_type, error.message, error.attempts)
        return outputs, failure

    async def _ask(self, prompt: str, counts: StageCounts):
        try:
            reply, attempts = await self.endpoint.complete(prompt)
        except EndpointFailure as error:
            counts.requests += error.attempts
            counts.retries += error.attempts - 1
            raise
        counts.requests += attempts
        counts.retries += attempts - 1
        counts.prompt_tokens += reply.prompt_tokens
        counts.completion_tokens += reply.completion_tokens
        return reply

    async def __call__(self, batch: pa.Table) -> pa.Table:
        self._loop = asyncio.get_running_loop()
        columns = {name: batch.column(name).to_pylist() for name in self.inputs}
        earlier = batch.column(ERROR_COLUMN).to_pylist() if ERROR_COLUMN in batch.column_names else [None] * len(batch)
        counts = StageCounts(rows=len(batch))

        async def skipped():
            return [None] * len(self.outputs), None

        results = await asyncio.gather(
            *(
                skipped() if earlier[i] is not None else self._row({c: columns[c][i] for c in self.inputs}, counts)
                for i in range(len(batch))
            )
        )
        errors = list(earlier)
        for i, (_, failure) in enumerate(results):
            if failure is not None:
                errors[i] = {"stage": self.spec.name, **failure.__dict__}
                counts.failures[failure.type] += 1
        self.metrics.add.remote(self.spec.name, counts)
        for position, (name, dtype) in enumerate(self.outputs.items()):
            batch = _set_column(batch, name, pa.array([values[position] for values, _ in results], type=dtype))
        return _set_column(batch, ERROR_COLUMN, pa.array(errors, type=ERROR_TYPE))


def _set_column(batch: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, values)
    return batch.append_column(name, values)


class GenerateStage(LLMStage):
    """Writes a response for each instruction (the seed pipeline's TextGeneration)."""

    inputs = ("instruction",)
    outputs = {"generation": pa.string(), "generation_model": pa.string()}

    def outputs_for(self, reply_text: str) -> tuple[list, RowFailure | None]:
        return [reply_text, self.spec.config.model], None


class AugmentStage(LLMStage):
    """Writes an instruction for each segment (the paper's self-augmentation, by the backward model)."""

    inputs = ("generation",)
    outputs = {"instruction": pa.string(), "instruction_model": pa.string()}

    async def _row(self, values: dict[str, str | None], counts: StageCounts) -> tuple[list, RowFailure | None]:
        outputs, failure = await super()._row(values, counts)
        if failure is None:
            failure = instruction_problem(outputs[0], values["generation"], self.spec.config.max_instruction_chars)
        return ([None] * len(self.outputs) if failure else outputs), failure

    def outputs_for(self, reply_text: str) -> tuple[list, RowFailure | None]:
        return [reply_text.strip(), self.spec.config.model], None


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


class ScoreStage(LLMStage):
    """Rates each (instruction, generation) pair with the self-curation prompt; parses score and reason."""

    inputs = ("instruction", "generation")
    outputs = {"score": pa.int64(), "reason": pa.string(), "scoring_model": pa.string()}

    def outputs_for(self, reply_text: str) -> tuple[list, RowFailure | None]:
        verdict = parse_verdict(reply_text)
        values = [verdict.score, verdict.reason, self.spec.config.model]
        if verdict.score is None:
            return values, RowFailure(
                "unparseable_score", "the reply has no Score: 1-5 line; raw reply kept in reason", 1
            )
        return values, None
