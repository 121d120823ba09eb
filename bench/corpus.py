"""A labelled synthetic web corpus for the `segments` regime: documents with planted duplicates.

Every document is 600-3,000 characters of prose (sentences of 8-20 words, paragraphs, commas) made of
pseudo-words drawn uniformly from a 65,536-word vocabulary, so two unrelated documents share no word
5-gram: only dedup can remove anything, and the quality figures measure dedup alone. Planted:

- exact copies (`EXACT_SHARE` of the documents), in groups of an original and 1-3 copies;
- near copies at word-5-gram-shingle Jaccard ~0.9, 0.8 and 0.6 to an original (`NEAR_SHARE` each),
  one copy per original: blocks of words replaced by other words of the same length, so a copy has
  its original's length, and a block of m words inside the text changes exactly m + 4 shingles (m at
  the text's start), which lets the number of changed shingles D be chosen exactly:
  J = (S - D) / (S + D) for an original of S shingles. The realised Jaccard of each copy is measured
  with `backtrans.segments.minhash.jaccard` as it is written;
- the rest: distinct documents.

Copies are scattered over the whole corpus (and its files), not next to their originals. A document's
text is a pure function of (seed, the index of the document whose words it takes, its own index for
the edits): word ids come from a counter-based hash, so any batch of documents is made at once with numpy,
and the corpus is written in bounded memory. The labels (kind, which document is a copy of which, the
realised Jaccard) go to a side file (`labels_path`), never into the text.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backtrans.segments.minhash import SHINGLE_WORDS, jaccard

MIN_CHARS, MAX_CHARS = 600, 3000  # SegmentsConfig's defaults, the paper's bounds
EXACT_SHARE = 0.10  # of all documents: exact copies (their originals come on top)
NEAR_LEVELS = (0.9, 0.8, 0.6)
NEAR_SHARE = 0.03  # of all documents, per level: near copies (their originals come on top)
JACCARD_TOLERANCE = 0.02
DISTINCT, EXACT = 0, 1  # a document's kind; kind 2 + k: a member of a near pair at NEAR_LEVELS[k]
KIND_NAMES = ("distinct", "exact", *(f"near_{level:g}" for level in NEAR_LEVELS))
BATCH = 4096  # documents made and written at once
VERSION = 2  # of the texts this module writes: a corpus on disk is reused only if it has this version

VOCABULARY = 1 << 16
# Words per length (3-10 letters), roughly English's spread; sums to VOCABULARY.
_WORDS_PER_LENGTH = {3: 2_000, 4: 7_000, 5: 10_000, 6: 11_000, 7: 11_000, 8: 10_000, 9: 8_000, 10: 6_536}
_LETTERS = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", np.uint8)
_LETTER_WEIGHTS = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0,
                            1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1])  # fmt: skip
# A cookie banner needs the word "cookie" (rules.boilerplate_reason); no other single word trips a rule.
_NEVER = frozenset({"cookie", "cookies"})

# Separators after a word: " ", ", ", ". " (end of sentence), ".\n\n" (end of paragraph), "." (the text's end).
_SEPARATORS = np.array([" ", ", ", ". ", ".\n\n", "."], dtype=object)
_SEPARATOR_CHARS = np.array([1, 2, 2, 3, 1], np.int64)
_COMMA, _SENTENCE_END, _PARAGRAPH_END, _FULL_STOP = 1, 2, 3, 4
_SENTENCE_WORDS = (8, 20)  # inclusive
_LONGEST_WORD = max(_WORDS_PER_LENGTH) + int(_SEPARATOR_CHARS.max())
# A document is cut at a target length drawn in this range; it ends within _LONGEST_WORD + 2 under it.
_TARGET_CHARS = (MIN_CHARS + _LONGEST_WORD + 2, MAX_CHARS)


@dataclass(frozen=True)
class Labels:
    """What was planted, per document index (0..n-1; its `id` is `doc_id(index)`): `kind` (DISTINCT,
    EXACT, 2 + near level), `copy_of` (the original's index, -1 for originals and distinct documents),
    `jaccard` (near copies: the realised shingle Jaccard to the original; NaN otherwise)."""

    kind: np.ndarray
    copy_of: np.ndarray
    jaccard: np.ndarray

    def save(self, path: Path) -> None:
        np.savez_compressed(path, kind=self.kind, copy_of=self.copy_of, jaccard=self.jaccard)

    @classmethod
    def load(cls, path: Path) -> Labels:
        with np.load(path) as data:
            return cls(data["kind"], data["copy_of"], data["jaccard"])


@dataclass(frozen=True)
class Corpus:
    folder: Path  # the JSONL files, nothing else (a reader may take every file in it)
    labels_path: Path
    n: int
    files: int
    seed: int

    @property
    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def labels(self) -> Labels:
        return Labels.load(self.labels_path)


def doc_id(index: int) -> str:
    """A document's `id`: its index as a string (datatrove's JsonlWriter drops falsy fields: an id 0)."""
    return f"{index:09d}"


def labels_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".labels.npz")


# --------------------------------------------------------------------------- hashing and vocabulary

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that mixes every bit (wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _hash(seed: int, stream: int, *values: np.ndarray) -> np.ndarray:
    """A counter-based hash of (seed, stream, values...), elementwise: the same inputs give the same
    bits whatever batch they are computed in."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed) ^ (np.uint64(stream) * _GOLDEN))
        for value in values:
            h = _mix(h ^ np.asarray(value).astype(np.uint64))
    return h


@dataclass(frozen=True)
class _Vocabulary:
    tokens: np.ndarray  # str per (word id, capitalised, separator code): `token_of` indexes it
    length: np.ndarray  # chars per word id; ids are sorted by length: a length's words are one id range
    class_start: np.ndarray  # per word id: the first id of its length, and how many ids that length has
    class_size: np.ndarray

    def token_of(self, ids: np.ndarray, capital: np.ndarray, separators: np.ndarray) -> np.ndarray:
        """Each word with its separator, capitalised where a sentence starts (a lookup, no string is made)."""
        return self.tokens[(ids * 2 + capital) * len(_SEPARATORS) + separators]

    @classmethod
    def make(cls, seed: int) -> _Vocabulary:
        rng = np.random.default_rng([seed, 0])
        weights = _LETTER_WEIGHTS / _LETTER_WEIGHTS.sum()
        words: list[str] = []
        starts, sizes = [], []
        for length, count in _WORDS_PER_LENGTH.items():
            chosen: list[str] = []
            seen = set(_NEVER)
            while len(chosen) < count:
                letters = rng.choice(_LETTERS, size=(2 * count, length), p=weights)
                for word in letters.view(f"S{length}").ravel():
                    text = word.decode()
                    if text not in seen:
                        seen.add(text)
                        chosen.append(text)
            starts += [len(words)] * count
            sizes += [count] * count
            words += chosen[:count]
        tokens = [word + sep for plain in words for word in (plain, plain.capitalize()) for sep in _SEPARATORS]
        return cls(
            tokens=np.array(tokens, dtype=object),
            length=np.array([len(word) for word in words], np.int64),
            class_start=np.array(starts, np.int64),
            class_size=np.array(sizes, np.int64),
        )


# --------------------------------------------------------------------------- the plan: who copies whom


def plan(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kind, copy_of) per document id: which documents are planted copies, of which original.

    Roles are dealt over a random permutation of the ids, so copies and originals are scattered.
    """
    rng = np.random.default_rng([seed, 1])
    kind = np.full(n, DISTINCT, np.int8)
    copy_of = np.full(n, -1, np.int64)
    order = rng.permutation(n)
    taken = 0

    def deal(count: int) -> np.ndarray:
        nonlocal taken
        ids = order[taken : taken + count]
        taken += count
        return ids

    exact_copies = round(EXACT_SHARE * n)
    copies_per_group = rng.choice([1, 2, 3], size=max(1, exact_copies), p=[0.6, 0.3, 0.1])
    copies_per_group = copies_per_group[: int(np.searchsorted(np.cumsum(copies_per_group), exact_copies)) + 1]
    if len(copies_per_group):
        copies_per_group[-1] -= copies_per_group.sum() - exact_copies  # exactly `exact_copies` in all
    copies_per_group = copies_per_group[copies_per_group > 0]
    near_pairs = round(NEAR_SHARE * n)
    if len(copies_per_group) + exact_copies + 2 * near_pairs * len(NEAR_LEVELS) > n:
        raise ValueError(f"a corpus of {n} documents is too small for its planted duplicates")
    originals = deal(len(copies_per_group))
    copies = deal(exact_copies)
    kind[originals] = kind[copies] = EXACT
    copy_of[copies] = np.repeat(originals, copies_per_group)
    for level in range(len(NEAR_LEVELS)):
        originals, copies = deal(near_pairs), deal(near_pairs)
        kind[originals] = kind[copies] = 2 + level
        copy_of[copies] = originals
    return kind, copy_of


# --------------------------------------------------------------------------- texts


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For segments of `counts` slots laid end to end: each slot's segment, its place in it, and
    each segment's first slot."""
    starts = np.cumsum(counts) - counts
    segment = np.repeat(np.arange(len(counts)), counts)
    return segment, np.arange(int(counts.sum())) - starts[segment], starts


def _cumsum_within(values: np.ndarray, segment: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The running sum of `values` restarted at each segment's first slot."""
    total = np.cumsum(values)
    return total - (total - values)[starts][segment]


def _words_of(keys: np.ndarray, seed: int, vocabulary: _Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documents' word ids and separator codes laid end to end, and each document's word count,
    from the key of the document whose words it takes. Each is cut so that its text (the last
    separator made a full stop) fits its target length."""
    low, high = _TARGET_CHARS
    target = (low + _hash(seed, 2, keys) % np.uint64(high - low + 1)).astype(np.int64)
    slots = target // 4 + 1  # a word and its separator take 4 characters or more
    doc, position, slot_start = _ragged(slots)
    ids = (_hash(seed, 3, keys[doc], position) % np.uint64(VOCABULARY)).astype(np.int64)
    separator = np.where(_hash(seed, 4, keys[doc], position) % np.uint64(14) == 0, _COMMA, 0)
    # Sentence ends: each document's sentence lengths laid end to end from its first word.
    s_doc, s_index, s_start = _ragged(slots // _SENTENCE_WORDS[0] + 1)
    low, high = _SENTENCE_WORDS
    lengths = (low + _hash(seed, 5, keys[s_doc], s_index) % np.uint64(high - low + 1)).astype(np.int64)
    last_word = _cumsum_within(lengths, s_doc, s_start) - 1
    inside = last_word < slots[s_doc]
    paragraph = _hash(seed, 6, keys[s_doc], s_index) % np.uint64(5) == 0
    separator[slot_start[s_doc[inside]] + last_word[inside]] = np.where(
        paragraph[inside], _PARAGRAPH_END, _SENTENCE_END
    )
    fits = _cumsum_within(vocabulary.length[ids] + _SEPARATOR_CHARS[separator], doc, slot_start) <= target[doc]
    counts = np.add.reduceat(fits.astype(np.int64), slot_start)  # the running length grows: a prefix fits
    separator[slot_start + counts - 1] = _FULL_STOP
    return ids[fits], separator[fits], counts


def _edit(ids: np.ndarray, level: float, rng: np.random.Generator, vocabulary: _Vocabulary) -> np.ndarray:
    """A copy of `ids` whose word 5-gram shingles have Jaccard ~`level` to the original's.

    D of the S = len - 4 shingles must change for J = (S - D) / (S + D): D = S (1 - J) / (1 + J),
    rounded. A block of m replaced words inside the text changes m + 4 shingles, when blocks are four
    or more words apart; a block at the start changes m. So 0-3 inner blocks and one block at the
    start for the rest make exactly D. Each word is replaced by another word of the same length.
    """
    shingles = len(ids) - SHINGLE_WORDS + 1
    change = round(shingles * (1 - level) / (1 + level))
    inner = min(int(rng.integers(0, 4)), change // SHINGLE_WORDS)
    head = int(rng.integers(0, min(SHINGLE_WORDS, change - SHINGLE_WORDS * inner) + 1)) if inner else change
    inner_words = change - head - (SHINGLE_WORDS - 1) * inner
    sizes = np.ones(inner, np.int64)
    if inner:  # split the inner blocks' words at random, one word at least each
        sizes += np.bincount(rng.integers(0, inner, inner_words - inner), minlength=inner)
    # Gaps before each inner block: 4 unchanged words at least, the slack spread at random; the last
    # block must end before the last shingle's first word, so that it changes m + 4 shingles.
    slack = shingles - head - int(sizes.sum()) - (SHINGLE_WORDS - 1) * inner
    if slack < 0:
        raise ValueError(f"a text of {len(ids)} words is too short for Jaccard {level}")
    extra = np.bincount(rng.integers(0, inner + 1, slack), minlength=inner + 1)[:inner] if inner else sizes[:0]
    starts = head + np.cumsum(SHINGLE_WORDS - 1 + extra + np.concatenate([[0], sizes[:-1]]))
    changed = np.concatenate([np.arange(head), *(np.arange(s, s + m) for s, m in zip(starts, sizes, strict=True))])
    edited = ids.copy()
    old = ids[changed]
    size = vocabulary.class_size[old]
    step = 1 + rng.integers(0, size - 1)  # never the same word again
    edited[changed] = vocabulary.class_start[old] + (old - vocabulary.class_start[old] + step) % size
    return edited


def _batch(first: int, last: int, kind, copy_of, seed, vocabulary) -> tuple[list[str], np.ndarray]:
    """The texts of documents first..last-1, and the realised Jaccard of each (NaN: not a near copy)."""
    docs = np.arange(first, last)
    keys = np.where(copy_of[docs] >= 0, copy_of[docs], docs)  # a copy starts from its original's words
    ids, separators, counts = _words_of(keys, seed, vocabulary)
    starts = np.cumsum(counts) - counts
    capital = np.empty(len(ids), bool)
    capital[1:] = (separators[:-1] == _SENTENCE_END) | (separators[:-1] == _PARAGRAPH_END)
    capital[starts] = True
    tokens = vocabulary.token_of(ids, capital, separators)
    texts, realised = [], np.full(len(docs), np.nan, np.float32)
    for i, doc in enumerate(docs.tolist()):
        words = slice(starts[i], starts[i] + counts[i])
        text = "".join(tokens[words].tolist())
        if kind[doc] >= 2 and copy_of[doc] >= 0:  # a near copy: edit its original's words
            level = NEAR_LEVELS[kind[doc] - 2]
            edited = _edit(ids[words], level, np.random.default_rng([seed, 7, doc]), vocabulary)
            changed = np.flatnonzero(edited != ids[words])
            copy = tokens[words].copy()
            copy[changed] = vocabulary.token_of(edited[changed], capital[words][changed], separators[words][changed])
            original, text = text, "".join(copy.tolist())
            realised[i] = jaccard(original, text)
            if abs(realised[i] - level) > JACCARD_TOLERANCE:
                raise AssertionError(f"document {doc}: Jaccard {realised[i]:.3f} to its original, not ~{level}")
        texts.append(text)
    return texts, realised


def generate(folder: Path, n: int, seed: int = 0, files: int = 1) -> Corpus:
    """Write n documents as JSON Lines (`id`, `text`) in `files` files under `folder`, and their labels
    beside it (`labels_path(folder)`). Made once per (n, seed, files): an existing corpus is reused."""
    folder = Path(folder)
    corpus = Corpus(folder, labels_path(folder), n, files, seed)
    manifest = folder.with_name(folder.name + ".json")
    wanted = {"n": n, "seed": seed, "files": files, "version": VERSION}
    if manifest.exists() and json.loads(manifest.read_text()).get("plan") == wanted and corpus.labels_path.exists():
        return corpus
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    vocabulary = _Vocabulary.make(seed)
    kind, copy_of = plan(n, seed)
    realised = np.full(n, np.nan, np.float32)
    per_file = math.ceil(n / files)
    for part in range(files):
        start, stop = part * per_file, min(n, (part + 1) * per_file)
        with (folder / f"part-{part:05d}.jsonl").open("w", encoding="utf-8") as out:
            for first in range(start, stop, BATCH):
                last = min(stop, first + BATCH)
                texts, realised[first:last] = _batch(first, last, kind, copy_of, seed, vocabulary)
                rows = ({"id": doc_id(first + i), "text": text} for i, text in enumerate(texts))
                out.write("".join(json.dumps(row) + "\n" for row in rows))
    Labels(kind, copy_of, realised).save(corpus.labels_path)
    counts = {name: int(np.count_nonzero(kind == k)) for k, name in enumerate(KIND_NAMES)}
    manifest.write_text(json.dumps({"plan": wanted, "documents_by_kind": counts}, indent=1) + "\n")
    return corpus


def quality(labels: Labels, kept_ids) -> dict:
    """How well a dedup did, from the ids it kept (`doc_id`s or their ints): the same figures for every system.

    - `recall[kind]`: of each planted group (an original and its copies), every member but one should
      go; recall is the share of those removable copies that went, over all groups of the kind (a
      group of which even the last member went counts its copies as caught, and under `lost`);
    - `lost[kind]`: groups none of whose members was kept;
    - `false_positive_rate`: the share of distinct documents (in no group) that were removed.
    """
    n = len(labels.kind)
    kept_ids = np.array([int(i) for i in kept_ids], np.int64)
    unknown = int(np.count_nonzero((kept_ids < 0) | (kept_ids >= n)))
    kept = np.zeros(n, bool)
    kept[kept_ids[(kept_ids >= 0) & (kept_ids < n)]] = True
    group = np.where(labels.copy_of >= 0, labels.copy_of, np.arange(n))  # each member's original
    members = np.bincount(group, minlength=n)
    kept_members = np.bincount(group, weights=kept, minlength=n).astype(np.int64)
    originals = labels.copy_of < 0
    recall, lost, groups = {}, {}, {}
    for kind, name in enumerate(KIND_NAMES):
        if kind == DISTINCT:
            continue
        roots = originals & (labels.kind == kind)
        removable = members[roots] - 1
        caught = np.minimum(members[roots] - kept_members[roots], removable)
        recall[name] = round(float(caught.sum() / removable.sum()), 6) if removable.sum() else None
        lost[name] = int(np.count_nonzero(kept_members[roots] == 0))
        groups[name] = int(np.count_nonzero(roots))
    distinct = labels.kind == DISTINCT
    removed_distinct = int(np.count_nonzero(distinct & ~kept))
    return {
        "documents": n,
        "kept": int(np.count_nonzero(kept)),
        "kept_ids_not_in_corpus": unknown,
        "groups": groups,
        "recall": recall,
        "lost": lost,
        "distinct": int(np.count_nonzero(distinct)),
        "distinct_removed": removed_distinct,
        "false_positive_rate": round(removed_distinct / max(1, int(np.count_nonzero(distinct))), 6),
    }


def files_for(n: int, workers: int = 2, docs_per_file: int = 100_000) -> int:
    """Files for a corpus of n documents: one read task each, and at least one per worker."""
    return max(workers, math.ceil(n / docs_per_file), 1) if n >= workers else 1


def _cli() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=None)
    args = parser.parse_args()
    corpus = generate(args.folder, args.n, args.seed, args.files or files_for(args.n, os.cpu_count() or 2))
    print(corpus.folder, corpus.labels_path)


if __name__ == "__main__":
    _cli()
