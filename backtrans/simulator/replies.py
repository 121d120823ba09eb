"""What the simulator answers: deterministic functions of a request's stage and prompt.

The stage comes from the `X-Backtrans-Stage` header (`backtrans.schema.STAGE_HEADER`), never from
the prompt's wording, so a custom `score.template` is still judged. The prompt is the text of the
last user message; its SHA-256 digest seeds the score and the reference in every reply.

Reply kinds:

* `score` (header `score`): the judge's reason, then `Score: N` with `N = simulated_score(prompt)`;
  as `{"reason": ..., "score": N}` when the request asks for JSON (`response_format`). With logprobs
  asked for, the token of N carries `score_probs(digest)` over 1..5 (N is its mode) beside a non-digit
  alternative; a weak judge (`noscore_share`) leaves the score line out of that share of prompts;
* `backward` (header `augment`, prompt in the paper's instruction-writing form, `prompts/backward.txt`):
  `[simulated instruction] What can you tell me about ...?`;
* `generate` (header `generate`, an augment request with a bare segment, or no header at all):
  `[simulated response from MODEL] ...`, text that never holds a score line. A bare segment gets it
  because the simulator stands in for a base model, which continues text it is given rather than
  writing an instruction for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

STAGES = ("generate", "augment", "score")  # the values of the stage header
KINDS = ("score", "generate", "backward")
# The first sentence of prompts/backward.txt: an augment request that follows the paper's prompt.
BACKWARD_PROMPT_PREFIX = "Below is a candidate answer to a question or instruction from an user."
CHARS_PER_TOKEN = 4

_JUDGE_READINGS = {
    1: "the answer is treated as unrelated to or unhelpful for the instruction",
    2: "the answer is treated as touching the instruction but leaving most of it open",
    3: "the answer is treated as helpful but not written like an AI assistant",
    4: "the answer is treated as a good assistant answer with room to be more focused",
    5: "the answer is treated as a complete, expert assistant answer",
}
_ANSWER_LABEL = re.compile(r"(?im)^[ \t]*(?:candidate answer|answer|response|output|text)[ \t]*:[ \t]*")
_QUESTION_LABEL = re.compile(r"(?im)^[ \t]*(?:instruction|question)[ \t]*:")
_SIM_TAG = re.compile(r"^\s*\[simulated [^\]]*\]")


def prompt_digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


def score_for_digest(digest: str) -> int:
    return 1 + int(digest[:8], 16) % 5


def simulated_score(prompt: str) -> int:
    """The score (1..5) the simulated judge gives to a scoring request whose last user message is `prompt`."""
    return score_for_digest(prompt_digest(prompt))


def score_probs(digest: str) -> tuple[float, ...]:
    """The simulated judge's probabilities of 1..5 at its score token; the score it writes is the mode."""
    weights = [1 + int(digest[8 + 2 * k : 10 + 2 * k], 16) for k in range(5)]
    weights[score_for_digest(digest) - 1] = sum(weights)
    total = sum(weights)
    return tuple(weight / total for weight in weights)


def weak_judge_leaves_out_score(digest: str, share: float) -> bool:
    """Whether a weak judge (`noscore_share`) writes no score line for this prompt: the same every time."""
    return int(digest[20:28], 16) / 16**8 < share


def reply_kind(stage: str | None, prompt: str) -> str:
    """The kind of reply for a request from `stage` (the header's value, None without it)."""
    if stage == "score":
        return "score"
    if stage == "augment" and prompt.startswith(BACKWARD_PROMPT_PREFIX):
        return "backward"
    return "generate"


def message_text(content: Any) -> str:
    """A chat message's text: a string, or OpenAI content parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part.get("text") if isinstance(part, dict) else part for part in content)
        return "".join(text for text in texts if isinstance(text, str))
    return "" if content is None else str(content)


def score_reply(digest: str) -> str:
    score = score_for_digest(digest)
    return (
        f"Simulated judge (not a real model): the score is derived from a hash of the "
        f"prompt (ref {digest[:8]}), and {_JUDGE_READINGS[score]}.\nScore: {score}"
    )


def noscore_reply(digest: str) -> str:
    return (
        "Simulated judge (not a real model): this reply deliberately leaves out the "
        f"rating line (injected fault, ref {digest[:8]})."
    )


def _answer_in_backward_prompt(prompt: str) -> str:
    # Whatever follows the prompt's own instructions: after an "Answer:"-style label if there is one
    # (up to a following "Instruction:" label), else after the first blank line (as in
    # prompts/backward.txt), else after the first line.
    rest = prompt[len(BACKWARD_PROMPT_PREFIX) :]
    label = _ANSWER_LABEL.search(rest)
    if label is not None:
        rest = rest[label.end() :]
        question = _QUESTION_LABEL.search(rest)
        return rest if question is None else rest[: question.start()]
    parts = rest.split("\n\n", 1)
    if len(parts) == 1:
        parts = rest.split("\n", 1)
    return parts[-1]


def backward_reply(prompt: str) -> str:
    answer = _SIM_TAG.sub("", _answer_in_backward_prompt(prompt), count=1)  # a simulated generation's tag
    phrase = " ".join(answer.split()[:8]).strip(" \t.,;:!?\"'`()[]{}") or "this answer"
    return f"[simulated instruction] What can you tell me about {phrase}?"


def generate_reply(prompt: str, model: str, digest: str) -> str:
    snippet = " ".join(prompt.split()[:12])
    if len(snippet) > 80:
        snippet = snippet[:77].rstrip() + "..."
    return (
        f"[simulated response from {model}] This text comes from a simulator, not from a "
        f'language model. It stands in for an answer to the request that begins "{snippet}". '
        "A real model would write a helpful reply here; the simulator only echoes the "
        f"opening words so the pipeline can be exercised end to end (ref {digest[:12]})."
    )


def json_score_reply(digest: str) -> str:
    reason = score_reply(digest).rpartition("\n")[0]
    return json.dumps({"reason": reason, "score": score_for_digest(digest)})


def reply_text(
    kind: str, prompt: str, model: str, digest: str, *, leave_out_score: bool = False, as_json: bool = False
) -> str:
    """The full reply, before `stop` and `max_tokens` cut it; `leave_out_score` is the noscore fault,
    `as_json` a request for a structured reply (a grammar never leaves the score out)."""
    if kind == "score" and as_json:
        return json_score_reply(digest)
    if kind == "score":
        return noscore_reply(digest) if leave_out_score else score_reply(digest)
    if kind == "backward":
        return backward_reply(prompt)
    return generate_reply(prompt, model, digest)


def cut(text: str, stop: Any, max_tokens: Any) -> tuple[str, str]:
    """(text, finish_reason) as a real server returns them: cut at the first `stop` string, then at
    `max_tokens` tokens of CHARS_PER_TOKEN characters ("length")."""
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    found = [i for s in stops if isinstance(s, str) and s and (i := text.find(s)) >= 0]
    if found:
        text = text[: min(found)]
    if isinstance(max_tokens, int) and max_tokens > 0 and len(text) > CHARS_PER_TOKEN * max_tokens:
        return text[: CHARS_PER_TOKEN * max_tokens], "length"
    return text, "stop"


def token_count(text_chars: int) -> int:
    """Tokens the usage block reports for `text_chars` characters (rounded up)."""
    return (text_chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


OTHER_TOKEN_SHARE = 0.1  # the score token's mass on a non-digit alternative: a reader must renormalise
_TOKEN = re.compile(r"\d|\s+|[^\s\d]+")
_SCORE_LINE = re.compile(r"Score: (\d)$")


def token_logprobs(text: str, kind: str, digest: str, top_n: int) -> list[dict[str, Any]]:
    """`logprobs.content` for a reply: one entry per token (digits alone, words, runs of space), each
    certain (logprob 0) but the score token of a judge's plain reply, which carries `score_probs`."""
    score_line = _SCORE_LINE.search(text) if kind == "score" else None
    score_at = score_line.start(1) if score_line else -1
    content, offset = [], 0
    for token in _TOKEN.findall(text):
        if offset == score_at:
            top = [(str(k + 1), math.log(p * (1 - OTHER_TOKEN_SHARE))) for k, p in enumerate(score_probs(digest))]
            top = sorted([*top, ("N/A", math.log(OTHER_TOKEN_SHARE))], key=lambda pair: -pair[1])
        else:
            top = [(token, 0.0)]
        logprob = next((value for alternative, value in top if alternative == token), 0.0)
        alternatives = [{"token": alternative, "logprob": value} for alternative, value in top[:top_n]]
        content.append({"token": token, "logprob": logprob, "top_logprobs": alternatives})
        offset += len(token)
    return content
