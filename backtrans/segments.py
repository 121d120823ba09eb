"""The paper's web-segment filter, run on the workers before any request is spent.

Li et al. (2023, ICLR version, appendix) keep web segments of 600-3,000 characters, drop empty,
all-uppercase and navigation-header text ("advertisement", "forum", "quick link", "free newsletter"),
remove repetitive segments, and deduplicate. This module does that as Ray Data operators:

1. per-row rules, in this order, each a pure function of the text (unit-testable without Ray):
   `empty`, `too_short` / `too_long`, `uppercase`, `boilerplate`, `repetitive`;
2. exact dedup on a 64-bit content hash;
3. near dedup: MinHash over word 5-gram shingles, LSH band keys; a row is removed when it shares a
   band bucket with a row ranked before it (see `_bucket_losers` and `lsh_params` for the approximation).
Of each group of duplicates the first row is kept: the smallest `keep_first_by` value, then `row_hash`.

Every row is labelled with the first rule that removes it, in the column `filter_reason` (null: kept),
so what each rule removed can be counted from the data (`count_reasons`) and the counts add up:
rows in = kept + sum of removals. `filter_segments` drops the removed rows and counts them as they
stream past (`FilterCounter`, a named actor).

Dedup never collects rows on the driver. The dedup keys of the rows that pass the per-row rules form a
narrow (shard, key, row_hash, code) table, hash-shuffled by a 12-bit shard of the key so that each
`map_groups` call sees whole buckets and finds the losers with numpy. The losers' ids (9 bytes each)
become one sorted array in the object store that every row batch looks its ids up in (a broadcast
join; no shuffle of the full rows). The input is therefore read twice, once for the keys and once for
the rows; `.materialize()` it first when reading is the expensive part.
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

from backtrans.config import SegmentsConfig
from backtrans.jsonl_datasource import ROW_ID_COLUMN

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


def _is_link_like(line: str) -> bool:
    if len(line) > 40 and not _MENU_MARK.search(line):  # prose: no separator, too long for a label
        return False
    return _is_nav_line(line) or _is_link_line(line) or _is_furniture_line(line)


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
            if len(line) <= 30 and _words(line) in _BARE_HEADERS:
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
    grams = len(words) - n + 1
    unique = len(set(zip(*(words[i:] for i in range(n)), strict=False)))  # n-grams, built in C
    repeated_grams = 1 - unique / grams if grams > 0 else 0.0
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


# ---------------------------------------------------------------------------------------------------
# Dedup keys: a content hash (exact) and MinHash LSH band keys over word 5-gram shingles (near).

SHINGLE_WORDS = 5
NUM_PERM = 256
_SEED = 20230811  # fixed: the same text gets the same signature on every worker and every run
_SHARD_SHIFT = np.uint64(64 - 12)  # dedup keys are shuffled by a 12-bit shard: many buckets per group
_EXACT, _NEAR = 1, 2  # dup codes, in rule order (a row that is both is counted as an exact duplicate)
_DUP_REASONS = pa.array([None, EXACT_DUPLICATE, NEAR_DUPLICATE], pa.string())


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) for an LSH over `num_perm` MinHash values.

    A pair of Jaccard similarity J shares at least one bucket with probability 1 - (1 - J**r)**b.
    We take the longest band (fewest pairs well under the threshold) for which a pair AT the threshold
    is still a candidate with probability >= 0.9; pairs above it are then caught almost surely.
    For 0.8 and 256 values that is 25 bands of 10: P(candidate) = 0.51 at J=0.7, 0.94 at 0.8,
    0.996 at 0.85 and 1.000 at 0.9 (and 0.14 at 0.6, 0.02 at 0.5).
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.9:
            best = (bands, rows)
    return best


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast, well-mixing bijection of uint64 (SplitMix64's finaliser); wraps mod 2**64."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash64(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


def content_hash(text: str) -> int:
    """The exact-dedup key: a 64-bit hash of the UTF-8 text (collision odds ~ n**2 / 2**65)."""
    return _hash64(text.encode("utf-8", "surrogatepass"), b"exact")


_rng = np.random.default_rng(_SEED)
_PERM_A = _rng.integers(0, 2**64, NUM_PERM, dtype=np.uint64, endpoint=False) | np.uint64(1)  # odd
_PERM_B = _rng.integers(0, 2**64, NUM_PERM, dtype=np.uint64, endpoint=False)
_BAND_SEEDS = _rng.integers(0, 2**64, NUM_PERM, dtype=np.uint64, endpoint=False)
del _rng


def _shingle_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every text's word 5-gram shingles, concatenated, and each text's shingle count.

    Words are hashed once per batch vocabulary (blake2b), shingles by chaining SplitMix64 over the
    five word hashes, vectorized over the whole batch. A text of fewer than five words is one shingle.
    """
    vocabulary: dict[str, int] = {}
    word_ids: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        lengths[i] = len(words)
        word_ids.extend(vocabulary.setdefault(word, len(vocabulary)) for word in words)
    word_hash = np.fromiter(
        (_hash64(word.encode("utf-8", "surrogatepass"), b"word") for word in vocabulary), np.uint64, len(vocabulary)
    )
    hashes = word_hash[np.asarray(word_ids, dtype=np.int64)]
    doc = np.repeat(np.arange(len(texts)), lengths)
    n = SHINGLE_WORDS
    with np.errstate(over="ignore"):
        starts = np.flatnonzero(doc[: len(doc) - n + 1] == doc[n - 1 :]) if len(doc) >= n else np.empty(0, np.int64)
        shingles = _splitmix64(hashes[starts])
        for k in range(1, n):
            shingles = _splitmix64(shingles ^ hashes[starts + k])
        counts = np.bincount(doc[starts], minlength=len(texts)) if len(starts) else np.zeros(len(texts), np.int64)
        short = np.flatnonzero(counts == 0)  # fewer than five words: the text is its own single shingle
        if len(short):
            extra = np.array([content_hash(texts[i]) for i in short], dtype=np.uint64)
            shingles = np.concatenate([shingles, extra])
            order = np.argsort(np.concatenate([doc[starts], short]), kind="stable")
            shingles = shingles[order]
            counts[short] = 1
    return shingles, counts


def minhash_signatures(texts: list[str]) -> np.ndarray:
    """(len(texts), NUM_PERM) MinHash signatures over word 5-gram shingles; values < 2**32."""
    shingles, counts = _shingle_hashes(texts)
    signatures = np.empty((len(texts), NUM_PERM), dtype=np.uint64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    per_chunk = max(1, (1 << 22) // NUM_PERM)  # bound the (shingles x permutations) matrix to ~32 MiB
    first = 0
    with np.errstate(over="ignore"):
        while first < len(texts):
            last = first + 1
            while last < len(texts) and offsets[last + 1] - offsets[first] <= per_chunk:
                last += 1
            chunk = shingles[offsets[first] : offsets[last]]
            values = (chunk[:, None] * _PERM_A + _PERM_B) >> np.uint64(32)  # multiply-shift hashing
            starts = offsets[first:last] - offsets[first]
            signatures[first:last] = np.minimum.reduceat(values, starts, axis=0)
            first = last
    return signatures


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 LSH bucket keys: each band's `rows` values hashed together with the band's seed."""
    grid = signatures[:, : bands * rows].reshape(len(signatures), bands, rows)
    with np.errstate(over="ignore"):
        keys = np.broadcast_to(_splitmix64(_BAND_SEEDS[:bands]), (len(signatures), bands))
        for k in range(rows):
            keys = _splitmix64(keys ^ grid[:, :, k])
    return keys


def jaccard(a: str, b: str, n: int = SHINGLE_WORDS) -> float:
    """Exact Jaccard similarity of two texts' word n-gram shingle sets (for tests and spot checks)."""

    def shingles(text: str) -> set:
        words = _WORD.findall(text.lower())
        return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}

    left, right = shingles(a), shingles(b)
    return len(left & right) / len(left | right) if left | right else 1.0


# ---------------------------------------------------------------------------------------------------
# Ray Data operators. Everything below runs on the workers, one Arrow batch at a time.


def _texts(batch: pa.Table, column: str) -> pa.ChunkedArray:
    if column not in batch.column_names:
        raise ValueError(f"segments.text_column: no column {column!r} in the data (columns: {batch.column_names})")
    texts = batch[column]
    return texts if pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type) else texts.cast(pa.string())


def _row_reasons(batch: pa.Table, config: SegmentsConfig) -> list[str | None]:
    return [row_reason(text, config) for text in _texts(batch, config.text_column).to_pylist()]


def _dedup_keys(batch: pa.Table, config: SegmentsConfig) -> pa.Table:
    """One (shard, key, row_hash, dup_code[, rank]) row per dedup key of every row that passes the
    per-row rules; `rank` is the `keep_first_by` column when that is not the row id itself."""
    for column in {ROW_ID_COLUMN, config.keep_first_by}:
        if column not in batch.column_names:
            raise ValueError(f"segments dedup needs the column {column!r}; the data has {batch.column_names}")
    passing = np.flatnonzero(np.array([reason is None for reason in _row_reasons(batch, config)], dtype=bool))
    texts = _texts(batch, config.text_column).take(passing).to_pylist()
    owners = []  # for each key, the index of its row in `passing`
    keys, codes = [], []
    if config.exact_dedup:
        keys.append(np.fromiter((content_hash(text) for text in texts), np.uint64, len(texts)))
        codes.append(np.full(len(texts), _EXACT, np.uint8))
        owners.append(np.arange(len(texts)))
    if config.near_dedup and texts:
        bands, rows = lsh_params(config.near_dup_threshold)
        near = band_keys(minhash_signatures(texts), bands, rows)
        keys.append(near.ravel())
        codes.append(np.full(near.size, _NEAR, np.uint8))
        owners.append(np.repeat(np.arange(len(texts)), bands))
    key = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    rows_of_keys = pa.array(passing[np.concatenate(owners)] if owners else np.empty(0, np.int64))
    table = {
        "shard": pa.array((key >> _SHARD_SHIFT).astype(np.uint16)),
        "key": pa.array(key, pa.uint64()),
        ROW_ID_COLUMN: batch[ROW_ID_COLUMN].take(rows_of_keys).cast(pa.uint64()),
        "dup_code": pa.array(np.concatenate(codes) if codes else np.empty(0, np.uint8), pa.uint8()),
    }
    if config.keep_first_by != ROW_ID_COLUMN:
        table["rank"] = batch[config.keep_first_by].take(rows_of_keys)
    return pa.table(table)


def _bucket_losers(group: pa.Table) -> pa.Table:
    """Every (row, code) that shares a bucket with a row ranked before it: that row is a duplicate.

    Called on one shard of keys, i.e. on whole buckets. Rows rank by `rank` (when present, nulls last)
    then row id. This is a union over bucket collisions, not a clustering: a row goes when ANY bucket
    it is in holds a row ranked before it, even one that goes itself. So no two kept rows share a
    bucket and the first of each group of near-duplicates is kept, but in a chain A~B~C where only
    neighbours are similar (A first), B and C both go though C may not be similar to A. LSH itself
    is probabilistic: see `lsh_params` for the odds of a pair becoming a candidate.
    """
    ranks = ["key"] + ["rank"] * ("rank" in group.column_names) + [ROW_ID_COLUMN]
    order = pc.sort_indices(group, sort_keys=[(name, "ascending", "at_end") for name in ranks])
    keys = group["key"].take(order).to_numpy()
    ids = group[ROW_ID_COLUMN].take(order).to_numpy()
    codes = group["dup_code"].take(order).to_numpy()
    bucket_start = np.ones(len(keys), dtype=bool)
    bucket_start[1:] = keys[1:] != keys[:-1]
    winner = ids[np.flatnonzero(bucket_start)[np.cumsum(bucket_start) - 1]]
    losing = ids != winner  # never against itself, even if a source repeated an id
    return pa.table(
        {ROW_ID_COLUMN: pa.array(ids[losing], pa.uint64()), "dup_code": pa.array(codes[losing], pa.uint8())}
    )


@ray.remote
def _lookup_table(*blocks: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The bucket losers as one lookup: their sorted unique row ids and, for each, the smallest code
    (a row loses in several buckets; an exact duplicate whose bands collide too is counted as exact)."""
    blocks = [block for block in blocks if block.num_rows]
    if not blocks:
        return np.empty(0, np.uint64), np.empty(0, np.uint8)
    ids = np.concatenate([block[ROW_ID_COLUMN].to_numpy() for block in blocks])
    codes = np.concatenate([block["dup_code"].to_numpy() for block in blocks])
    order = np.lexsort((codes, ids))
    ids, codes = ids[order], codes[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first], codes[first]


def _tag_rows(batch: pa.Table, config: SegmentsConfig, duplicates: tuple | None = None) -> pa.Table:
    """Add `filter_reason`: the first per-row rule that fails, else the dedup verdict, else null."""
    reasons = pa.array(_row_reasons(batch, config), pa.string())
    if duplicates is not None:
        ids, codes = ray.get(duplicates[0])  # zero-copy from the node's object store
        row_ids = batch[ROW_ID_COLUMN].to_numpy().astype(np.uint64)
        at = np.minimum(np.searchsorted(ids, row_ids), max(len(ids) - 1, 0))
        found = ids[at] == row_ids if len(ids) else np.zeros(len(row_ids), dtype=bool)
        dup_codes = np.where(found, codes[at] if len(ids) else 0, 0).astype(np.int64)
        reasons = pc.coalesce(reasons, pc.take(_DUP_REASONS, pa.array(dup_codes)))
    if REASON_COLUMN in batch.column_names:
        batch = batch.drop_columns([REASON_COLUMN])
    return batch.append_column(REASON_COLUMN, reasons)


def annotate_segments(dataset: ray.data.Dataset, config: SegmentsConfig) -> ray.data.Dataset:
    """Every input row, in input order, plus `filter_reason`: the first rule that removes it, or null.

    With dedup on, this first runs the key pass (it returns once the duplicates are known): the narrow
    (key, row_hash) table of the rows that pass the per-row rules is grouped by key shard on the
    workers, and the ids that lose a bucket become one sorted array in the object store. The returned
    dataset is lazy: it reads the input again and looks every row id up in that array (a broadcast
    join: 9 bytes per duplicate per node, against a shuffle of the full rows; Ray's shuffle
    `Dataset.join` would also need polars). So the input is read twice; `.materialize()` it first
    when reading is the expensive part, or when two reads may not give the same rows (a `limit`
    without `preserve_order`): a row missing from the key pass cannot win or lose a bucket.
    """
    duplicates = None
    if config.exact_dedup or config.near_dedup:
        losers = (
            dataset.map_batches(_dedup_keys, fn_kwargs={"config": config}, batch_format="pyarrow")
            .groupby("shard", num_partitions=config.num_partitions)
            .map_groups(_bucket_losers, batch_format="pyarrow")
        )
        # Only ObjectRefs pass through the driver; the blocks stay in the object store. (Materialized
        # first: to_arrow_refs on a plan with no rows out would run it again to find a schema.)
        blocks = losers.materialize().to_arrow_refs()
        duplicates = (_lookup_table.remote(*blocks),)  # in a tuple: Ray passes the ref on unresolved
    return dataset.map_batches(
        _tag_rows, fn_kwargs={"config": config, "duplicates": duplicates}, batch_format="pyarrow"
    )


# ---------------------------------------------------------------------------------------------------
# Counting. The kept rows stream on into the LLM stages, so the counts are taken as they pass: a
# small named actor gets one {reason: rows} dict per block. Counting from the data instead
# (`count_reasons`) executes the whole dedup plan a second time, or needs the corpus held in the
# object store; it is exact and retry-proof, so use it to audit. The actor's counts are complete once
# the filtered dataset has been consumed once; consuming it again (or a retried task) adds again.


@ray.remote(num_cpus=0)
class _Tally:
    def __init__(self):
        self._counts: Counter = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self._counts.update(counts)

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


def _summarize(counts: dict[str, int]) -> dict:
    removed = {reason: int(counts.get(reason, 0)) for reason in REASONS}
    kept = int(counts.get("kept", 0))
    return {"rows_in": kept + sum(removed.values()), "kept": kept, "removed": removed}


class FilterCounter:
    """What each rule removed: {"rows_in": n, "kept": k, "removed": {reason: rows, ...}}.

    Backed by the named actor `name` (look it up with `ray.get_actor(name)` from another process).
    """

    def __init__(self, name: str | None = None):
        self.name = name or f"backtrans-segments-{uuid.uuid4().hex[:12]}"
        self.actor = _Tally.options(name=self.name).remote()

    def counts(self) -> dict:
        return _summarize(ray.get(self.actor.snapshot.remote()))


def _reason_counts(batch: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(batch[REASON_COLUMN])
    return {
        ("kept" if reason is None else reason): count
        for reason, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    }


def _drop_and_count(batch: pa.Table, tally) -> pa.Table:
    if batch.num_rows:
        ray.get(tally.add.remote(_reason_counts(batch)))  # waited for: the block is done only once counted
    kept = batch.filter(pc.is_null(batch[REASON_COLUMN]))
    return kept.drop_columns([REASON_COLUMN])


def drop_removed(
    annotated: ray.data.Dataset, counter: FilterCounter | None = None
) -> tuple[ray.data.Dataset, FilterCounter]:
    """The rows of an `annotate_segments` dataset that no rule removed (without `filter_reason`),
    and the counter that every block reports its reasons to on the way."""
    counter = counter or FilterCounter()
    kept = annotated.map_batches(_drop_and_count, fn_kwargs={"tally": counter.actor}, batch_format="pyarrow")
    return kept, counter


def filter_segments(
    dataset: ray.data.Dataset, config: SegmentsConfig, counter: FilterCounter | None = None
) -> tuple[ray.data.Dataset, FilterCounter]:
    """The rows that pass every rule (input columns only), and the counter of what each rule removed.

    The dedup key pass runs now (see `annotate_segments`); the rows stream when the returned dataset
    is consumed, and the counts are complete once it has been consumed.
    """
    return drop_removed(annotate_segments(dataset, config), counter)


def _block_counts(batch: pa.Table) -> pa.Table:
    counts = _reason_counts(batch)
    return pa.table(
        {"reason": pa.array(list(counts), pa.string()), "rows": pa.array(list(counts.values()), pa.int64())}
    )


def count_reasons(annotated: ray.data.Dataset) -> dict:
    """Counts from the data of an `annotate_segments` dataset, in `FilterCounter.counts()`'s shape.

    Counted per block on the workers; only a handful of (reason, rows) pairs per block reach the driver.
    """
    counts: Counter = Counter()
    per_block = annotated.select_columns([REASON_COLUMN]).map_batches(
        _block_counts, batch_format="pyarrow", batch_size=None
    )
    for part in per_block.iter_rows():
        counts[part["reason"]] += part["rows"]
    return _summarize(counts)
