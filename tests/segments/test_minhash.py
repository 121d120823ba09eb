"""MinHash signatures and LSH band keys, pure functions."""

import numpy as np

from backtrans.segments.minhash import NUM_PERM, band_keys, jaccard, lsh_params, minhash_signatures
from tests.segments.data import OTHER, PROSE


def test_lsh_parameters_catch_pairs_at_the_threshold():
    bands, rows = lsh_params(0.8)
    assert (bands, rows) == (28, 9)
    assert bands * rows <= NUM_PERM

    def candidate(j):
        return 1 - (1 - j**rows) ** bands

    assert candidate(0.8) >= 0.98 and candidate(0.85) > 0.99 and candidate(0.6) < 0.25 and candidate(0.5) < 0.06


def test_minhash_estimates_jaccard_and_near_duplicates_share_a_band():
    edited = PROSE.replace("room temperature", "a warm spot").replace("weekly", "every week")
    appended = PROSE + " Discard half before each feeding so it does not outgrow its jar."
    signatures = minhash_signatures([PROSE, edited, appended, OTHER, PROSE])
    assert signatures.shape == (5, NUM_PERM) and signatures.max() < 2**32
    assert (signatures[0] == signatures[4]).all()  # deterministic
    for i, text in ((1, edited), (2, appended), (3, OTHER)):
        estimate = (signatures[0] == signatures[i]).mean()
        assert abs(estimate - jaccard(PROSE, text)) < 0.1
    keys = band_keys(signatures, *lsh_params(0.8))
    assert (keys[0] == keys[2]).any()  # Jaccard ~0.86: a candidate
    assert not (keys[0] == keys[3]).any()
    assert not np.intersect1d(keys[0], keys[3]).size  # different bands never share keys by accident
    # Texts of fewer than five words still get a signature (the text is its one shingle).
    short = minhash_signatures(["two words", "two words", "other words"])
    assert (short[0] == short[1]).all() and not (short[0] == short[2]).all()
