"""Turn a judge's reply into `score` (1-5 or None) and `reason`.

Rules, from what real judges write (see the paper notes on distilabel's parser):
- the LAST "Score: N" wins, so a reply that quotes the scale or mentions "Score: 2" before its
  final verdict is read by its verdict;
- any case, markdown emphasis around the label or the number, "N/5", trailing punctuation;
- only whole numbers 1 to 5 count: "Score: 10", "Score: 0", "Score: 8/10" or "Score: 4.5" give None
  (never the first digit, as a loose regex would);
- the reason is the text before the score; an unparseable reply keeps the whole raw reply as reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def parse_verdict(reply: str | None) -> Verdict:
    text = reply or ""
    matches = list(SCORE_PATTERN.finditer(text))
    if not matches:
        return Verdict(None, text)
    last = matches[-1]
    score = _as_score(last.group("value"), last.group("scale"))
    if score is None:
        return Verdict(None, text)
    reason = text[: last.start()].rstrip().rstrip("*_#-:").rstrip()
    return Verdict(score, reason)
