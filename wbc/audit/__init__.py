"""Dataset audit (`python audit.py data=...`): what a dataset holds and what is wrong with it, before
training. Pure code (no Lightning, no Hydra): the entry point (wbc/cli/audit.py) hands plain samples,
the mask encoding and the persisted split in.

- `scan`: one record per sample: file formats and modes from the header, unreadable / truncated /
  mismatched files (all of them, not the first), mask values, nucleus / cytoplasm shares, mask sanity,
  pixel hash and perceptual hash;
- `duplicates`: exact and near duplicates, and the pairs or groups a split puts on two sides;
- `labels`: images whose label the out-of-fold predictions of a CV sweep disagree with;
- `core`: the audit of one dataset as one JSON-ready dict; `report`: audit.json, audit.md, the summary.
"""
