"""The stages without Ray or a server: a fake endpoint answers, a fake sink collects what they report."""

import asyncio
import math
from collections import Counter

import pyarrow as pa
import pytest

from backtrans.backends import Reply, RequestOptions
from backtrans.backends.base import TokenLogprobs
from backtrans.config import AugmentConfig, ScoreConfig, StageConfig
from backtrans.endpoints import EndpointFailure
from backtrans.metrics import StageCounts, StopReason
from backtrans.pacing import BudgetExhausted
from backtrans.parse import VERDICT_SCHEMA, json_verdict, score_distribution
from backtrans.prompts import BACKWARD, INSTRUCTION, SELF_CURATION, SELF_CURATION_JSON
from backtrans.stages import AugmentStage, GenerateStage, NoLogprobs, ScoreStage, StageSpec


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
    endpoint = FakeEndpoint(BudgetExhausted("score.max_requests reached (4 requests in this actor)", "max_requests"))
    stage, sink = _stage(ScoreStage, "score", SELF_CURATION, endpoint)
    with pytest.raises(BudgetExhausted):
        _run(stage, pa.table({"instruction": ["q"], "generation": ["a"]}))

    assert sink.stops == [
        StopReason(
            "score", "BudgetExhausted", "score.max_requests reached (4 requests in this actor)", True, "max_requests"
        )
    ]
    assert sink.counts == [("score", StageCounts(rows=1))]  # a stopped batch still reports what it spent: nothing here


def _logprob_reply(tokens, finish_reason="stop"):
    """A Reply whose text is the tokens joined; each token is (text, {alternative: probability})."""
    entries = tuple(TokenLogprobs(text, {alt: math.log(p) for alt, p in top.items()}) for text, top in tokens)
    return Reply("".join(text for text, _ in tokens), 10, 5, finish_reason, entries)


def _score(endpoint, method, **config):
    template = SELF_CURATION_JSON if method == "json" else SELF_CURATION
    stage, sink = _stage(ScoreStage, "score", template, endpoint, method=method, **config)
    out = _run(stage, pa.table({"instruction": ["q"], "generation": ["a"]}))
    return out.drop_columns(["instruction", "generation"]).to_pylist(), sink


def test_logprobs_reads_the_distribution_at_the_last_score_token_renormalised():
    sure = {"x": 1.0}
    reply = _logprob_reply([
        ("Score", sure), (":", sure), (" 2", {" 2": 1.0}), (" is", sure), (" too", sure), (" low", sure),
        (".\n", sure), ("Score", sure), (":", sure), (" ", sure),
        ("4", {"4": 0.5, "5": 0.2, " 3": 0.1, "N/A": 0.2}),  # " 3": the space folded into the digit
    ])  # fmt: skip
    endpoint = FakeEndpoint(reply)
    [row], _ = _score(endpoint, "logprobs")

    assert endpoint.options == [RequestOptions(top_logprobs=20)]
    assert row["score"] == 4 and row["reason"] == "Score: 2 is too low."
    assert row["score_probs"] == pytest.approx([0.0, 0.0, 0.125, 0.625, 0.25], abs=1e-12)
    assert row["score_expected"] == pytest.approx(3 * 0.125 + 4 * 0.625 + 5 * 0.25, abs=1e-12)
    assert row["error"] is None


def test_score_distribution_without_a_score_token_is_none():
    sure = {"x": 1.0}
    no_line = _logprob_reply([("Fine", sure), (".", sure)])
    no_digit = _logprob_reply([("Score", sure), (": ", sure), ("4", {"four": 0.9, "IV": 0.1})])
    out_of_range = _logprob_reply([("Score", sure), (": ", sure), ("8", {"8": 1.0}), ("/10", sure)])
    assert [score_distribution(reply.logprobs) for reply in (no_line, no_digit, out_of_range)] == [None] * 3


def test_logprobs_falls_back_to_parsing_a_reply_without_a_score_token():
    sure = {"x": 1.0}
    parsed = _logprob_reply([("Good", sure), (".\nScore: ", sure), ("3", {"three": 1.0})])
    unparseable = _logprob_reply([("No", sure), (" verdict", sure)])
    [row], _ = _score(FakeEndpoint(parsed), "logprobs")
    assert (row["score"], row["score_expected"], row["score_probs"], row["error"]) == (3, None, None, None)
    [row], _ = _score(FakeEndpoint(unparseable), "logprobs")
    assert (row["score"], row["reason"], row["error"]["type"]) == (None, "No verdict", "unparseable_score")


def test_logprobs_against_a_server_that_returns_none_stops_the_run_naming_the_key():
    endpoint = FakeEndpoint("Good.\nScore: 4")  # a plain reply: no logprobs at all
    stage, sink = _stage(ScoreStage, "score", SELF_CURATION, endpoint, method="logprobs")
    with pytest.raises(NoLogprobs, match=r"^score\.method logprobs: the server returned no logprobs; "):
        _run(stage, pa.table({"instruction": ["q"], "generation": ["a"]}))
    assert [(stop.stage, stop.kind, stop.resumable) for stop in sink.stops] == [("score", "NoLogprobs", False)]


def test_json_verdict_reads_reason_and_score_and_asks_with_the_schema():
    endpoint = FakeEndpoint('{"reason": "Complete and expert.", "score": 5}')
    [row], _ = _score(endpoint, "json")

    assert row == {"score": 5, "reason": "Complete and expert.", "scoring_model": "m-1", "score_expected": None,
                   "score_probs": None, "error": None}  # fmt: skip
    assert endpoint.options == [RequestOptions(json_schema=VERDICT_SCHEMA)]
    assert endpoint.prompts[0].endswith('as in {"reason": "<reasoning>", "score": <rating>}.\n\nq\na\n')


@pytest.mark.parametrize(
    "reply",
    ['{"reason": "ok", "score": 7}', '{"reason": "ok", "score": "4"}', '{"reason": "ok", "score": true}',
     '{"score": 4}', '{"reason": "ok", "score": 4, "extra": 1}', "Score: 4", "[4]"],
)  # fmt: skip
def test_json_verdict_refuses_what_the_schema_does_not_allow(reply):
    assert json_verdict(reply) is None


@pytest.mark.parametrize(("reask", "requests"), [(False, 1), (True, 2)])
def test_invalid_verdict_keeps_the_raw_reply_and_is_reasked_only_when_configured(reask, requests):
    endpoint = FakeEndpoint("Score: 4", '{"reason": "ok", "score": 4}')
    rows, sink = _score(endpoint, "json", reask_unparseable=reask)

    if reask:
        assert (rows[0]["score"], rows[0]["reason"], rows[0]["error"]) == (4, "ok", None)
    else:
        assert (rows[0]["score"], rows[0]["reason"]) == (None, "Score: 4")
        message = "the reply is not a {reason, score} verdict under the JSON schema; raw reply kept in reason"
        assert rows[0]["error"] == {"stage": "score", "type": "invalid_verdict", "attempts": 1, "message": message}
    assert len(endpoint.prompts) == requests and sink.counts[0][1].requests == requests


@pytest.mark.parametrize("method", ["parse", "logprobs", "json"])
def test_a_reply_cut_at_the_token_limit_is_truncated_and_not_reasked(method):
    cut = _logprob_reply([('{"reason": "Good', {"x": 1.0})], finish_reason="length")
    rows, sink = _score(FakeEndpoint(cut), method, reask_unparseable=True)

    assert (rows[0]["score"], rows[0]["reason"]) == (None, '{"reason": "Good')
    message = "the reply was cut at the token limit; raise generation_kwargs.max_new_tokens"
    assert rows[0]["error"] == {"stage": "score", "type": "truncated", "attempts": 1, "message": message}
    assert sink.counts[0][1].failures == Counter({"truncated": 1}) and sink.counts[0][1].requests == 1
