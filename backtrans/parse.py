"""Turn a judge's reply into `score` (1-5 or None) and `reason`: by its text (`parse_verdict`), by the
probabilities of 1-5 at its score token (`score_distribution`), or as a JSON verdict (`json_verdict`).

Rules, from what real judges write (see the paper notes on distilabel's parser):
- the LAST "Score: N" wins, so a reply that quotes the scale or mentions "Score: 2" before its
  final verdict is read by its verdict;
- any case, markdown emphasis around the label or the number, "N/5", trailing punctuation;
- only whole numbers 1 to 5 count: "Score: 10", "Score: 0", "Score: 8/10" or "Score: 4.5" give None
  (never the first digit, as a loose regex would);
- the reason is the text before the score; an unparseable reply keeps the whole raw reply as reason.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backtrans.backends.base import TokenLogprobs

_EMPHASIS = r"[*_\s]*"
SCORE_PATTERN = re.compile(
    rf"(?<![a-z])score{_EMPHASIS}[:：]{_EMPHASIS}(?P<value>\d+(?:\.\d+)?)(?:\s*/\s*(?P<scale>\d+))?(?![\d.]*\d)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Verdict:
    score: int | None
    reason: str


def _as_score(value: str, scale: str | None) -> int | None:
    if scale is not None and scale != "5":
        return None
    number = float(value)
    if not number.is_integer() or not 1 <= number <= 5:
        return None
    return int(number)


def final_score(text: str) -> re.Match | None:
    """The last "Score: N" of `text` when it is a valid score (the match's `value` group holds N)."""
    matches = list(SCORE_PATTERN.finditer(text))
    if not matches or _as_score(matches[-1].group("value"), matches[-1].group("scale")) is None:
        return None
    return matches[-1]


def parse_verdict(reply: str | None) -> Verdict:
    text = reply or ""
    last = final_score(text)
    if last is None:
        return Verdict(None, text)
    reason = text[: last.start()].rstrip().rstrip("*_#-:").rstrip()
    return Verdict(int(float(last.group("value"))), reason)


def score_distribution(tokens: Sequence[TokenLogprobs]) -> tuple[float, ...] | None:
    """The probabilities of 1..5 at the token of the reply's final score, renormalised over those five;
    None when the reply has no score token (no valid final "Score: N", or no digit 1-5 among the
    alternatives at its place)."""
    text = "".join(token.token for token in tokens)  # the offsets of the reply as the server tokenised it
    last = final_score(text)
    if last is None:
        return None
    start, offset = last.start("value"), 0
    for token in tokens:
        offset += len(token.token)
        if offset > start:
            break
    mass = [0.0] * 5
    for alternative, logprob in token.top.items():
        digit = alternative.strip(" :*_")  # a tokenizer may fold the space or the emphasis into the digit
        if len(digit) == 1 and "1" <= digit <= "5":
            mass[int(digit) - 1] += math.exp(logprob)
    total = sum(mass)
    return tuple(share / total for share in mass) if total > 0 else None


# `score.method: json`: the verdict's schema, reason first so the judge still reasons before it
# scores. `enum`, not minimum/maximum: OpenAI's strict mode takes only a subset of JSON Schema.
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
    "required": ["reason", "score"],
    "additionalProperties": False,
}


def json_verdict(reply: str | None) -> Verdict | None:
    """The verdict of a reply that is valid under VERDICT_SCHEMA; None for any other reply."""
    try:
        value = json.loads(reply or "")
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"reason", "score"}:
        return None
    reason, score = value["reason"], value["score"]
    if not isinstance(reason, str) or type(score) is not int or not 1 <= score <= 5:  # bool is an int
        return None
    return Verdict(score, reason)
