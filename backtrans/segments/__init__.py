"""The paper's web-segment filter, run on the workers before any request is spent.

- `rules`: the per-row rules (empty, length, all-caps, boilerplate, repetition), one small object each;
- `minhash`: shingles, MinHash signatures and LSH band keys, the near-dedup keys;
- `dedup`: the exact and near-dedup Ray Data operators (a hash shuffle of narrow key rows);
- `filter_pass`: the web job's first pass, from the source to `OUTPUT/.segments` and the counts.
"""
