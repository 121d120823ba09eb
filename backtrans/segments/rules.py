"""The per-row rules: each a small object that keeps one text (None) or names why it removes it.

Li et al. (2023, ICLR version, appendix) keep web segments of 600-3,000 characters and drop empty,
all-uppercase and navigation-header text ("advertisement", "forum", "quick link", "free newsletter")
and repetitive segments. `RowRules` applies the rules in order and stops at the first that removes a
text, so each rule sees each row at most once. No rule counts anything: the pass counts the verdicts
in one place (`filter_pass`), as datatrove's `BaseFilter` counts what its filters return.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from backtrans.config import SegmentsConfig

EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
UPPERCASE = "uppercase"
BOILERPLATE = "boilerplate"
REPETITIVE = "repetitive"
# The order the rules apply in; a row is counted under the first rule that removes it.
ROW_REASONS = (EMPTY, TOO_SHORT, TOO_LONG, UPPERCASE, BOILERPLATE, REPETITIVE)

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what repetition, link labels and MinHash shingles are made of."""
    return _WORD.findall(text.lower())


class Rule(ABC):
    """One per-row rule. `reasons`: every reason `__call__` can return. Rules take their limits
    without defaults: SegmentsConfig is the one place that holds the paper's values."""

    reasons: ClassVar[tuple[str, ...]]

    @abstractmethod
    def __call__(self, text: str) -> str | None:
        """None to keep the text, else the reason it is removed. Only `Empty` sees a null or blank text."""


class Empty(Rule):
    reasons = (EMPTY,)

    def __call__(self, text: str | None) -> str | None:
        return EMPTY if text is None or not text.strip() else None


@dataclass(frozen=True)
class Length(Rule):
    """Python `len(text)`: characters, as the paper counts; both bounds are inclusive."""

    min_chars: int
    max_chars: int
    reasons = (TOO_SHORT, TOO_LONG)

    def __call__(self, text: str) -> str | None:
        if len(text) < self.min_chars:
            return TOO_SHORT
        if len(text) > self.max_chars:
            return TOO_LONG
        return None


_ASCII_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_ASCII_LOWER = bytes(range(ord("a"), ord("z") + 1))
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def uppercase_ratio(text: str) -> float:
    """Share of cased letters that are upper case (0 for text without cased letters, e.g. CJK)."""
    data = text.encode("ascii", "ignore")  # ASCII letters are counted in C, the rest one by one
    upper = len(data) - len(data.translate(None, _ASCII_UPPER))
    lower = len(data) - len(data.translate(None, _ASCII_LOWER))
    if len(data) != len(text):
        others = _NON_ASCII.findall(text)
        upper += sum(map(str.isupper, others))
        lower += sum(map(str.islower, others))
    return upper / (upper + lower) if upper + lower else 0.0


@dataclass(frozen=True)
class _AtMost(Rule):
    """Removes a text whose `measure` is over `maximum`, under the rule's one reason."""

    maximum: float
    measure: ClassVar[Callable[[str], float]]

    def __call__(self, text: str) -> str | None:
        return self.reasons[0] if self.measure(text) > self.maximum else None


class Uppercase(_AtMost):
    reasons = (UPPERCASE,)
    measure = staticmethod(uppercase_ratio)


# The paper's navigation headers, plus the other page furniture a crawl picks up with them.
NAV_HEADERS = ("advertisement", "forum", "quick link", "free newsletter")
_FURNITURE_LINES = frozenset(
    NAV_HEADERS
    + (
        "advertisements",
        "quick links",
        "sponsored",
        "sponsored content",
        "sponsored links",
        "skip to main content",
        "skip to content",
        "back to top",
        "continue reading below",
        "related stories",
        "related posts",
        "related articles",
        "recent posts",
        "recent comments",
        "popular posts",
        "you might also like",
        "sitemap",
        "share this",
    )
)
_BARE_HEADERS = frozenset(NAV_HEADERS + ("advertisements", "quick links", "free newsletters"))
_SEPARATORS = re.compile(r"\s(?:\||»|›|•|·)\s|\s>\s|^(?:»|›|•)\s")
_MENU_MARK = re.compile(r"[|»›•·>]")
_SENTENCE_MARK = re.compile(r"\w[.!?](?:\s|$)")
_COOKIE = re.compile(r"\bcookies?\b", re.IGNORECASE)
_CONSENT = re.compile(
    r"\b(?:accept|consent|agree|got it|manage (?:your )?(?:choices|options|preferences)|cookie (?:policy|settings)"
    r"|reject all|opt[ -]out)\b",
    re.IGNORECASE,
)
_SITE_VOICE = re.compile(
    r"\b(?:this (?:site|website)|our (?:site|website)|we use|we and our|by using|by clicking|continue browsing"
    r"|our partners|our use of)\b|\[[^\]]{1,30}\]",
    re.IGNORECASE,
)
_LIST_ITEM = re.compile(r"^(?:[-*•»›]|\d+[.)])\s+")


def _is_nav_line(line: str) -> bool:
    """A run of short link labels joined by separators: `Home | About | Contact`, `A » B » C`."""
    if line.startswith("|") or line.endswith("|"):  # a Markdown table row, not a menu
        return False
    items = [item for item in _SEPARATORS.split(line) if item.strip()]
    return len(items) >= 3 and sum(len(item) for item in items) / len(items) <= 40


def _label(line: str) -> str:
    return " ".join(words(line))


def _is_cookie_banner(line: str) -> bool:
    return bool(_COOKIE.search(line) and _CONSENT.search(line) and _SITE_VOICE.search(line))


def _is_link_line(line: str) -> bool:
    """A short list entry with no sentence in it: `- About Us`, `» Minestrone`, `- Link 3: Example Maps`."""
    body = _LIST_ITEM.sub("", line, count=1)
    return body != line and len(body.split()) <= 6 and not body.rstrip().endswith((".", "?", "!", ":"))


def _is_link_like(line: str) -> bool:
    if len(line) > 40 and not _MENU_MARK.search(line):  # prose: no separator, too long for a label
        return False
    return _is_nav_line(line) or _is_link_line(line) or _label(line) in _FURNITURE_LINES


def _is_prose(line: str) -> bool:
    """A line holding a sentence: eight or more words and sentence punctuation."""
    return line.count(" ") >= 7 and _SENTENCE_MARK.search(line) is not None and not _is_nav_line(line)


def boilerplate_reason(text: str) -> str | None:
    """Why the text looks like page furniture rather than content, or None.

    - `nav_header`: a navigation bar naming one of the paper's headers ("Home | Forum | Quick Links"),
      or one of those headers alone on a line ("Advertisement");
    - `cookie_banner`: a consent notice in the site's voice ("This site uses cookies ... [Accept]");
    - `link_heavy`: at least half of 5+ lines are menus, short link entries or page furniture
      ("- About Us", "Related Stories"), and under a third of the characters are in sentences.
    A header word in prose ("subscribe to our free newsletter", "asked on another forum") is not one.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    lowered = text.lower()
    if any(header in lowered for header in NAV_HEADERS):
        for line in lines:
            if len(line) <= 30 and _label(line) in _BARE_HEADERS:
                return "nav_header"
            if _is_nav_line(line) and any(header in line.lower() for header in NAV_HEADERS):
                return "nav_header"
    if "cookie" in lowered and any(len(line) < 1000 and _is_cookie_banner(line) for line in lines):
        return "cookie_banner"
    if len(lines) >= 5:
        link_like = sum(1 for line in lines if _is_link_like(line))
        prose = sum(len(line) for line in lines if _is_prose(line))
        if link_like * 2 >= len(lines) and prose * 3 < sum(map(len, lines)):
            return "link_heavy"
    return None


class Boilerplate(Rule):
    """Counted as one rule; `boilerplate_reason` says which kind of furniture, for spot checks."""

    reasons = (BOILERPLATE,)

    def __call__(self, text: str) -> str | None:
        return BOILERPLATE if boilerplate_reason(text) is not None else None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _duplicate_share(parts: list[str]) -> float:
    """Characters in parts that repeat an earlier part, over all characters."""
    seen: set[str] = set()
    total = duplicated = 0
    for part in parts:
        total += len(part)
        if part in seen:
            duplicated += len(part)
        else:
            seen.add(part)
    return duplicated / total if total else 0.0


def repetition(text: str, n: int = 5) -> float:
    """How much of the text repeats itself: the largest of the shares of characters in duplicate lines,
    of characters in duplicate sentences, and of word n-grams that occurred earlier in the text."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    sentences = [sentence for line in lines for sentence in _SENTENCE_END.split(line) if sentence]
    tokens = words(text)
    grams = len(tokens) - n + 1
    unique = len(set(zip(*(tokens[i:] for i in range(n)), strict=False)))  # n-grams, built in C
    repeated_grams = 1 - unique / grams if grams > 0 else 0.0
    return max(_duplicate_share(lines), _duplicate_share(sentences), repeated_grams)


class Repetitive(_AtMost):
    reasons = (REPETITIVE,)
    measure = staticmethod(repetition)


@dataclass(frozen=True)
class RowRules:
    """The per-row rules in the order they apply (`Empty` first: the others need a non-blank text)."""

    rules: tuple[Rule, ...]

    @classmethod
    def from_config(cls, config: SegmentsConfig) -> RowRules:
        rules = [Empty(), Length(config.min_chars, config.max_chars), Uppercase(config.max_uppercase_ratio)]
        if config.boilerplate:
            rules.append(Boilerplate())
        rules.append(Repetitive(config.max_repetition))
        return cls(tuple(rules))

    def reason(self, text: str | None) -> str | None:
        """The first rule's reason to remove this text, or None when it passes them all."""
        for rule in self.rules:
            reason = rule(text)
            if reason is not None:
                return reason
        return None

    def reasons(self, texts: Sequence[str | None]) -> list[str | None]:
        return [self.reason(text) for text in texts]


def texts_of(batch: pa.Table, column: str) -> pa.ChunkedArray:
    """The text column of a batch; a column of another type than string is cast (rules take str)."""
    if column not in batch.column_names:
        raise ValueError(f"segments.text_column: no column {column!r} in the data (columns: {batch.column_names})")
    texts = batch[column]
    return texts if pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type) else texts.cast(pa.string())
