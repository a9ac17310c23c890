"""Exact and near duplicates, and the leakage a split makes of them.

- exact: the same decoded pixels (a hash of the RGB array: a PNG re-saved as BMP is still a duplicate);
- near: perceptual hashes (pHash, 64 bits) at most `radius` bits apart: re-saved, re-compressed,
  slightly refocused fields of the same cells. pHash is not shift-tolerant and single-cell crops of
  different cells can hash alike, so every candidate up to `search` bits also gets a pixel `match`: the
  best normalised cross-correlation of one image's central 60 % anywhere inside the other (grey
  thumbnails, 96 px, blurred by 1 px; either way round). On the real sets, copies of one cell score
  0.98-1.0 and different, similar-looking centred cells up to 0.95. `match >= min_match` confirms a pair, and also admits re-crops of the
  same field that pHash puts further apart than `radius`.
- leakage: a duplicate pair or a group (patient/slide) with members on two sides of the split: the
  persisted test split against train+val (whatever the fold), and train against val in each CV fold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from wbc.data.split_groups import DisjointSets

# the central share of one thumbnail searched for inside the other
MATCH_CENTRE = 0.6


def exact_groups(ids: Sequence[str], hashes: Sequence[str | None]) -> list[list[str]]:
    """Ids sharing one pixel hash (groups of 2+), in first-seen order."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for i, h in zip(ids, hashes):
        if h is not None:
            by_hash[h].append(i)
    return [g for g in by_hash.values() if len(g) > 1]


def pixel_match(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Best TM_CCOEFF_NORMED of either thumbnail's centre inside the other (1.0 = the same pixels up
    to a shift and brightness); None when a thumbnail is missing or too small."""
    import cv2

    if a is None or b is None:
        return None
    best = None
    for x, y in ((a, b), (b, a)):
        h, w = x.shape
        dh, dw = round(h * (1 - MATCH_CENTRE) / 2), round(w * (1 - MATCH_CENTRE) / 2)
        centre = x[dh : h - dh, dw : w - dw]
        if centre.size < 16 or centre.shape[0] > y.shape[0] or centre.shape[1] > y.shape[1] or centre.std() == 0:
            continue
        score = float(np.nan_to_num(cv2.matchTemplate(y, centre, cv2.TM_CCOEFF_NORMED), nan=0.0).max())
        best = score if best is None else max(best, score)
    return None if best is None else round(min(best, 1.0), 4)


def near_pairs(
    ids: Sequence[str],
    phashes: Sequence[str | None],
    radius: int,
    thumbs: Sequence[np.ndarray | None] | None = None,
    search: int | None = None,
    min_match: float | None = None,
    exclude: set[frozenset] | None = None,
) -> list[dict]:
    """Near-duplicate pairs {a, b, distance, match, confirmed}, by distance then match (highest first).

    A pair is kept when its pHash distance is at most `radius`, or at most `search` with a pixel match
    of at least `min_match`; `exclude` (exact duplicates) is left out."""
    keep = [(i, h) for i, h in zip(range(len(ids)), phashes) if h is not None]
    if len(keep) < 2:
        return []
    index = np.array([i for i, _ in keep])
    bits = np.array([int(h, 16) for _, h in keep], dtype=np.uint64)
    use_match = thumbs is not None and min_match is not None
    reach = max(radius, search or 0) if use_match else radius
    out = []
    for k in range(len(bits) - 1):
        dist = np.bitwise_count(bits[k] ^ bits[k + 1 :])
        for j in np.nonzero(dist <= reach)[0]:
            a, b = int(index[k]), int(index[k + 1 + j])
            if exclude and frozenset((ids[a], ids[b])) in exclude:
                continue
            d = int(dist[j])
            match = pixel_match(thumbs[a], thumbs[b]) if thumbs is not None else None
            # pHash only (no pixel match asked for): every pair within the radius counts
            confirmed = (match is not None and match >= min_match) if use_match else True
            if d <= radius or confirmed:
                out.append({"a": ids[a], "b": ids[b], "distance": d, "match": match, "confirmed": bool(confirmed)})
    out.sort(key=lambda p: (p["distance"], -(p["match"] or 0.0), p["a"], p["b"]))
    return out


def split_sides(test: Sequence[str], folds: Sequence[Mapping[str, Sequence[str]]], fold: int | None) -> dict[str, str]:
    """id -> train / val / test in the configured fold (test when no fold is known)."""
    side = {i: "test" for i in test}
    if fold is not None and 0 <= fold < len(folds):
        for name in ("train", "val"):
            side.update({i: name for i in folds[fold].get(name, [])})
    return side


def _crossings(members: Sequence[str], test: set[str], folds: Sequence[tuple[set[str], set[str]]]) -> list[str]:
    """Where a set of ids that must stay together is split: 'test' and/or 'fold k'."""
    where = []
    inside = [m in test for m in members]
    if any(inside) and not all(inside):
        where.append("test vs train/val")
    for k, (train, val) in enumerate(folds):
        if any(m in train for m in members) and any(m in val for m in members):
            where.append(f"fold {k}: train vs val")
    return where


def leakage(
    pairs: Sequence[dict],
    test: Sequence[str],
    folds: Sequence[Mapping[str, Sequence[str]]],
    fold: int | None,
    groups: Mapping[str, str | None] | None = None,
) -> dict:
    """Duplicate pairs ({a, b, kind, ...}) and groups with members on two sides.

    Returns {"pairs", "groups", "test_pairs", "fold_pairs", "possible_pairs", "test_groups"}; each leaking
    pair keeps its fields and gains `sides` (configured fold) and `where` (every crossing). Pairs with
    `confirmed: false` (pHash only, pixel match below the threshold) count as `possible_pairs` only."""
    test_set = set(test)
    fold_sets = [(set(f.get("train", [])), set(f.get("val", []))) for f in folds]
    side = split_sides(test, folds, fold)
    leaks = []
    for p in pairs:
        where = _crossings((p["a"], p["b"]), test_set, fold_sets)
        if where:
            leaks.append({**p, "sides": [side.get(p["a"], "-"), side.get(p["b"], "-")], "where": where})
    by_group: dict[str, list[str]] = defaultdict(list)
    for sid, g in (groups or {}).items():
        if g not in (None, ""):
            by_group[g].append(sid)
    group_leaks = []
    for g, members in sorted(by_group.items()):
        where = _crossings(members, test_set, fold_sets)
        if where:
            sides = sorted({side.get(m, "-") for m in members})
            group_leaks.append({"group": g, "n": len(members), "sides": sides, "where": where})
    sure = [p for p in leaks if p.get("confirmed", True)]
    return {
        "pairs": leaks,
        "groups": group_leaks,
        # exact and confirmed near duplicates only; pHash-only pairs below the pixel match are `possible`
        "test_pairs": sum("test vs train/val" in p["where"] for p in sure),
        "fold_pairs": sum(any(w.startswith("fold") for w in p["where"]) for p in sure),
        "possible_pairs": len(leaks) - len(sure),
        "test_groups": sum("test vs train/val" in g["where"] for g in group_leaks),
    }


def exact_pairs(groups: Sequence[Sequence[str]]) -> list[dict]:
    """Every pair within each exact-duplicate group, as {a, b, kind: exact, distance: 0}."""
    return [{"a": a, "b": b, "kind": "exact", "distance": 0, "match": 1.0, "confirmed": True} for g in groups for a, b in combinations(g, 2)]


def clusters(pairs: Sequence[dict]) -> list[list[str]]:
    """Images linked by exact or confirmed near pairs (connected components, 2+ images), largest first:
    the copies of one field, each of which must sit on one side of a split."""
    sets = DisjointSets()
    for p in pairs:
        if p.get("confirmed", True):
            sets.union(p["b"], p["a"])
    find, parent = sets.find, sets.parent
    members: dict[str, list[str]] = defaultdict(list)
    for x in list(parent):
        members[find(x)].append(x)
    return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m))
