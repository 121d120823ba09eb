"""The paper's web-segment filter, run on the workers before any request is spent.

Li et al. (2023, ICLR version, appendix) keep web segments of 600-3,000 characters, drop empty,
all-uppercase and navigation-header text ("advertisement", "forum", "quick link", "free newsletter"),
remove repetitive segments, and deduplicate. This module does that as Ray Data operators:

1. per-row rules, in this order, each a pure function of the text (unit-testable without Ray):
   `empty`, `too_short` / `too_long`, `uppercase`, `boilerplate`, `repetitive`;
2. exact dedup on a content hash, keeping the smallest `row_hash` of each group;
3. near dedup: MinHash over word 5-gram shingles, LSH bands as keys; a row is removed when it shares
   a band bucket with a row of smaller `row_hash` (see `_bucket_losers` for the approximation).

Every row is labelled with the first rule that removes it, in the column `filter_reason` (null: kept),
so what each rule removed can be counted from the data (`count_reasons`) and the counts add up:
rows in = kept + sum of removals. `filter_segments` drops the removed rows and counts them as they
stream past (see `FilterCounter`).

Dedup never collects rows on the driver. The dedup keys of the rows that pass the per-row rules go
into a narrow (key, row_hash) table that is grouped on the workers by a hash shard of the key; the
losers' ids come back as a (row_hash, reason) table that is joined onto the full rows. The input is
therefore read twice (once for the keys, once for the rows); `.materialize()` it first when reading
is the expensive part.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field

from backtrans.config import _Strict

ROW_ID_COLUMN = "row_hash"  # the uint64 id the sources give every row (jsonl_datasource, read_parquet)
REASON_COLUMN = "filter_reason"

EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
UPPERCASE = "uppercase"
BOILERPLATE = "boilerplate"
REPETITIVE = "repetitive"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
# The order the rules apply in; a row is counted under the first rule that removes it.
REASONS = (EMPTY, TOO_SHORT, TOO_LONG, UPPERCASE, BOILERPLATE, REPETITIVE, EXACT_DUPLICATE, NEAR_DUPLICATE)


class SegmentsConfig(_Strict):
    text_column: str = "text"
    min_chars: int = Field(default=600, ge=0)
    max_chars: int = Field(default=3000, ge=1)
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = Field(default=0.8, gt=0, lt=1)  # Jaccard of word 5-gram shingles
    max_repetition: float = Field(default=0.3, gt=0, le=1)  # duplicate lines / sentences / 5-grams in one text
    boilerplate: bool = True  # navigation headers, link-heavy text, cookie banners
    max_uppercase_ratio: float = Field(default=0.5, gt=0, le=1)  # upper / cased letters
    num_partitions: int = Field(default=16, ge=1)  # hash partitions of the dedup shuffles (more for big corpora)


# ---------------------------------------------------------------------------------------------------
# Per-row rules: pure functions of one text.


def is_empty(text: str | None) -> bool:
    return text is None or not text.strip()


def length_reason(text: str, min_chars: int = 600, max_chars: int = 3000) -> str | None:
    """`too_short` / `too_long` by Python `len(text)` (characters, as the paper counts), else None."""
    if len(text) < min_chars:
        return TOO_SHORT
    if len(text) > max_chars:
        return TOO_LONG
    return None


def uppercase_ratio(text: str) -> float:
    """Share of cased letters that are upper case (0 for text without cased letters, e.g. CJK)."""
    upper = sum(map(str.isupper, text))
    lower = sum(map(str.islower, text))
    return upper / (upper + lower) if upper + lower else 0.0


def is_uppercase(text: str, max_ratio: float = 0.5) -> bool:
    return uppercase_ratio(text) > max_ratio


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
_WORD = re.compile(r"\w+")


def _is_nav_line(line: str) -> bool:
    """A run of short link labels joined by separators: `Home | About | Contact`, `A » B » C`."""
    if line.startswith("|") or line.endswith("|"):  # a Markdown table row, not a menu
        return False
    items = [item for item in _SEPARATORS.split(line) if item.strip()]
    return len(items) >= 3 and sum(len(item) for item in items) / len(items) <= 40


def _words(line: str) -> str:
    return " ".join(_WORD.findall(line.lower()))


def _is_furniture_line(line: str) -> bool:
    return _words(line) in _FURNITURE_LINES


def _is_cookie_banner(line: str) -> bool:
    return bool(_COOKIE.search(line) and _CONSENT.search(line) and _SITE_VOICE.search(line))


def _is_link_line(line: str) -> bool:
    """A short list entry with no sentence in it: `- About Us`, `» Minestrone`, `- Link 3: Example Maps`."""
    body = _LIST_ITEM.sub("", line, count=1)
    return body != line and len(body.split()) <= 6 and not body.rstrip().endswith((".", "?", "!", ":"))


def boilerplate_reason(text: str) -> str | None:
    """Why the text looks like page furniture rather than content, or None.

    - `nav_header`: a navigation bar naming one of the paper's headers ("Home | Forum | Quick Links"),
      or one of those headers alone on a line ("Advertisement");
    - `cookie_banner`: a consent notice in the site's voice ("This site uses cookies ... [Accept]");
    - `link_heavy`: half or more of the lines are menus or short link entries.
    A header word in prose ("subscribe to our free newsletter", "asked on another forum") is not one.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    link_like = 0
    for line in lines:
        lowered = line.lower()
        nav = _is_nav_line(line)
        if (nav and any(header in lowered for header in NAV_HEADERS)) or _words(line) in _BARE_HEADERS:
            return "nav_header"
        if len(line) < 1000 and _is_cookie_banner(line):
            return "cookie_banner"
        link_like += nav or _is_link_line(line) or _is_furniture_line(line)
    if link_like / len(lines) >= 0.5 and len(lines) >= 4:
        return "link_heavy"
    return None


def is_boilerplate(text: str) -> bool:
    return boilerplate_reason(text) is not None


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
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    repeated_grams = 1 - len(set(grams)) / len(grams) if grams else 0.0
    return max(_duplicate_share(lines), _duplicate_share(sentences), repeated_grams)


def is_repetitive(text: str, max_repetition: float = 0.3) -> bool:
    return repetition(text) > max_repetition


def row_reason(text: str | None, config: SegmentsConfig) -> str | None:
    """The first per-row rule that removes this text, or None when it passes them all."""
    if is_empty(text):
        return EMPTY
    reason = length_reason(text, config.min_chars, config.max_chars)
    if reason is not None:
        return reason
    if is_uppercase(text, config.max_uppercase_ratio):
        return UPPERCASE
    if config.boilerplate and is_boilerplate(text):
        return BOILERPLATE
    if is_repetitive(text, config.max_repetition):
        return REPETITIVE
    return None
