"""The stages without Ray or a server: a fake endpoint answers, a fake sink collects what they report."""

import asyncio
from collections import Counter

import pyarrow as pa
import pytest

from backtrans.backends import Reply
from backtrans.config import AugmentConfig, ScoreConfig, StageConfig
from backtrans.endpoints import EndpointFailure
from backtrans.metrics import StageCounts, StopReason
from backtrans.pacing import BudgetExhausted
from backtrans.prompts import BACKWARD, INSTRUCTION, SELF_CURATION
from backtrans.stages import AugmentStage, GenerateStage, ScoreStage, StageSpec


class FakeEndpoint:
    """Answers each prompt with the next item of `replies` (a text, a Reply, or an exception to raise)."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.prompts, self.options = [], []
        self.in_flight = 0
        self.closed = False

    async def complete(self, prompt, options=None):
        self.prompts.append(prompt)
        self.options.append(options)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, str):
            reply = Reply(reply, prompt_tokens=10, completion_tokens=5, finish_reason="stop")
        return reply, 1

    async def close(self):
        self.closed = True


class FakeSink:
    def __init__(self):
        self.counts, self.gauges, self.stops = [], [], []

    def add(self, stage, counts):
        self.counts.append((stage, counts))

    def gauge(self, stage, actor_id, in_flight):
        self.gauges.append((stage, in_flight))

    async def stop(self, reason):
        self.stops.append(reason)


def _stage(cls, name, template, endpoint, config_cls=None, **config):
    config_cls = config_cls or (ScoreConfig if cls is ScoreStage else StageConfig)
    spec = StageSpec(name, config_cls(backend="openai", model="m-1", **config), None, str(template), "unused")
    sink = FakeSink()
    return cls(spec, endpoint=endpoint, metrics=sink), sink


def _run(stage, batch):
    async def call():
        try:
            return await stage(batch)
        finally:
            await stage._close()

    return asyncio.run(call())


def test_generate_writes_the_reply_and_model_and_counts_the_batch():
    endpoint = FakeEndpoint("Paris.", "Four.")
    stage, sink = _stage(GenerateStage, "generate", INSTRUCTION, endpoint)
    out = _run(stage, pa.table({"instruction": ["Capital of France?", "2+2?"]}))

    assert out.to_pylist() == [
        {"instruction": "Capital of France?", "generation": "Paris.", "generation_model": "m-1", "error": None},
        {"instruction": "2+2?", "generation": "Four.", "generation_model": "m-1", "error": None},
    ]
    assert endpoint.prompts == ["Capital of France?", "2+2?"]  # the bare instruction
    assert sink.counts == [("generate", StageCounts(rows=2, requests=2, prompt_tokens=20, completion_tokens=10))]
    assert sink.gauges[0] == ("generate", 0) and sink.stops == []
    assert endpoint.closed


def test_failed_request_and_bad_input_keep_the_row_with_a_failure_record():
    endpoint = FakeEndpoint(EndpointFailure("http_400", "context too long", 1))
    stage, sink = _stage(GenerateStage, "generate", INSTRUCTION, endpoint, max_input_chars=10)
    out = _run(stage, pa.table({"instruction": ["Too long?", "", "x" * 11]}))

    assert out.to_pylist() == [
        {"instruction": "Too long?", "generation": None, "generation_model": None,
         "error": {"stage": "generate", "type": "http_400", "message": "context too long", "attempts": 1}},
        {"instruction": "", "generation": None, "generation_model": None,
         "error": {"stage": "generate", "type": "bad_input", "message": "instruction is empty", "attempts": 0}},
        {"instruction": "x" * 11, "generation": None, "generation_model": None,
         "error": {"stage": "generate", "type": "bad_input",
                   "message": "instruction has 11 chars, over max_input_chars=10", "attempts": 0}},
    ]  # fmt: skip
    assert len(endpoint.prompts) == 1  # the bad inputs were never sent
    [(_, counts)] = sink.counts
    assert counts == StageCounts(rows=3, requests=1, failures=Counter({"bad_input": 2, "http_400": 1}))


def test_rows_an_earlier_stage_failed_pass_through_without_a_request():
    earlier = {"stage": "generate", "type": "timeout", "message": "slow", "attempts": 7}
    endpoint = FakeEndpoint("Good answer.\nScore: 4")
    stage, sink = _stage(ScoreStage, "score", SELF_CURATION, endpoint)
    batch = pa.table({"instruction": ["q1", "q2"], "generation": [None, "a2"], "error": [earlier, None]})
    out = _run(stage, batch)

    assert out.column("error").to_pylist() == [earlier, None]
    assert out.column("score").to_pylist() == [None, 4]
    assert out.column("reason").to_pylist() == [None, "Good answer."]
    assert out.column("scoring_model").to_pylist() == [None, "m-1"]
    assert len(endpoint.prompts) == 1 and endpoint.prompts[0].endswith("line.\n\nq2\na2\n")
    assert sink.counts[0][1].failures == Counter()


@pytest.mark.parametrize(("reask", "requests"), [(False, 1), (True, 2)])
def test_unparseable_score_keeps_the_raw_reply_and_is_reasked_only_when_configured(reask, requests):
    endpoint = FakeEndpoint("I like it.", "Still no score.")
    stage, sink = _stage(ScoreStage, "score", SELF_CURATION, endpoint, reask_unparseable=reask)
    out = _run(stage, pa.table({"instruction": ["q"], "generation": ["a"]}))

    raw = "Still no score." if reask else "I like it."
    assert out.drop_columns(["instruction", "generation"]).to_pylist() == [
        {"score": None, "reason": raw, "scoring_model": "m-1", "score_expected": None, "score_probs": None,
         "error": {"stage": "score", "type": "unparseable_score",
                   "message": "the reply has no Score: 1-5 line; raw reply kept in reason", "attempts": 1}},
    ]  # fmt: skip
    assert len(endpoint.prompts) == requests
    assert sink.counts[0][1].requests == requests


def test_augment_strips_the_instruction_and_fails_a_copy_of_the_segment():
    segment = "The river floods every spring and the town moved uphill."
    endpoint = FakeEndpoint("  Why did the town move?  ", segment)
    stage, _ = _stage(AugmentStage, "augment", BACKWARD, endpoint, config_cls=AugmentConfig)
    out = _run(stage, pa.table({"generation": [segment, segment]}))

    assert out.drop_columns(["generation"]).to_pylist() == [
        {"instruction": "Why did the town move?", "instruction_model": "m-1", "error": None},
        {"instruction": None, "instruction_model": None,
         "error": {"stage": "augment", "type": "bad_instruction",
                   "message": "the written instruction copies the segment", "attempts": 1}},
    ]  # fmt: skip


def test_a_stop_is_recorded_in_the_metrics_before_it_is_raised():
    endpoint = FakeEndpoint(BudgetExhausted("score.max_requests reached (4 requests in this actor)"))
    stage, sink = _stage(ScoreStage, "score", SELF_CURATION, endpoint)
    with pytest.raises(BudgetExhausted):
        _run(stage, pa.table({"instruction": ["q"], "generation": ["a"]}))

    assert sink.stops == [
        StopReason("score", "BudgetExhausted", "score.max_requests reached (4 requests in this actor)", True)
    ]
    assert sink.counts == []
