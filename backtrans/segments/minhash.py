"""Dedup keys: a content hash (exact) and MinHash LSH band keys over word 5-gram shingles (near).

Everything is seeded with constants, so the same text gets the same keys on every worker and run.
"""

from __future__ import annotations

import hashlib

import numpy as np

from backtrans.segments.rules import words

SHINGLE_WORDS = 5
NUM_PERM = 256
_SEED = 20230811
# The odds that a pair exactly at `near_dup_threshold` shares a bucket: high enough that pairs a little
# under it are still caught 95% of the time (the recall target of BENCHMARKS.md's segments regime).
CAUGHT_AT_THRESHOLD = 0.98


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) for an LSH over `num_perm` MinHash values.

    A pair of Jaccard similarity J shares at least one bucket with probability 1 - (1 - J**r)**b.
    We take the longest band (fewest pairs well under the threshold) for which a pair AT the threshold
    is still a candidate with probability >= CAUGHT_AT_THRESHOLD; pairs above it are then caught almost
    surely. For 0.8 and 256 values that is 28 bands of 9: P(candidate) = 0.98 at J=0.8, 0.96 at
    0.78, 0.999 at 0.85, and 0.68 at 0.7, 0.25 at 0.6, 0.05 at 0.5 (BENCHMARKS.md measures it).
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= CAUGHT_AT_THRESHOLD:
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
        tokens = words(text)
        lengths[i] = len(tokens)
        word_ids.extend(vocabulary.setdefault(word, len(vocabulary)) for word in tokens)
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
        tokens = words(text)
        return {tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1))}

    left, right = shingles(a), shingles(b)
    return len(left & right) / len(left | right) if left | right else 1.0
