"""The audit of one dataset: samples in, one JSON-ready dict out (what audit.json holds).

`audit_samples` takes plain data (the manifest's samples and classes, the mask encoding, the
persisted split as {"test": ids, "folds": [{"train", "val"}]}), so it runs on any dataset the
framework reads, with or without a DataModule.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wbc.audit.duplicates import clusters, exact_groups, exact_pairs, leakage, near_pairs
from wbc.audit.scan import Record, describe, scan_sample
from wbc.data.manifest import MaskEncoding, Sample

# mask values listed one by one in the histogram; the rest are summed into "other"
MAX_MASK_VALUES = 32


def _counts(values: Iterable[Any]) -> dict[str, int]:
    return dict(Counter(str(v) for v in values).most_common())


def class_counts(records: Sequence[Record], classes: Sequence[str]) -> dict:
    """Images per class (data.classes order) and per group; imbalance = largest / smallest class."""
    per_class = Counter(r.class_name for r in records)
    ordered = {c: per_class.get(c, 0) for c in classes} | {c: n for c, n in per_class.items() if c not in classes}
    nonzero = [n for n in ordered.values() if n > 0]
    groups = [r.group for r in records if r.group not in (None, "")]
    per_group = _counts(groups) if groups else None
    group_classes = None
    if groups:
        by_group: dict[str, Counter] = {}
        for r in records:
            if r.group not in (None, ""):
                by_group.setdefault(r.group, Counter())[r.class_name] += 1
        group_classes = {g: dict(c) for g, c in sorted(by_group.items())}
    return {
        "per_class": ordered,
        "imbalance_ratio": round(max(nonzero) / min(nonzero), 3) if nonzero else None,
        "n_groups": len(set(groups)) if groups else 0,
        "ungrouped": sum(r.group in (None, "") for r in records),
        "per_group": per_group,
        "per_group_class": group_classes,
    }


def mask_summary(records: Sequence[Record], classes: Sequence[str]) -> dict:
    """Raw value histogram, nucleus / cytoplasm share per class (mean over images), sanity flags."""
    values: Counter = Counter()
    for r in records:
        values.update(r.mask_values)
    common = dict(values.most_common(MAX_MASK_VALUES))
    rest = values.total() - sum(common.values())
    if rest:
        common[f"other ({len(values) - len(common)} values)"] = rest
    shares: dict[str, dict] = {}
    for c in [*classes, *sorted({r.class_name for r in records} - set(classes))]:
        got = [r.shares for r in records if r.class_name == c and r.shares is not None]
        if got:
            shares[c] = {
                "masks": len(got),
                "nucleus_mean": round(float(np.mean([s["nucleus"] for s in got])), 4),
                "cytoplasm_mean": round(float(np.mean([s["cytoplasm"] for s in got])), 4),
                "nucleus_min": round(float(np.min([s["nucleus"] for s in got])), 4),
            }
    flagged = lambda key: [{"id": r.id, "class": r.class_name, "value": r.mask_flags[key]} for r in records if key in r.mask_flags]  # noqa: E731
    return {
        "values": common,
        "share_per_class": shares,
        "empty_nucleus": [f["id"] for f in flagged("empty_nucleus")],
        "nucleus_outside_cytoplasm": flagged("nucleus_outside_cytoplasm"),
        "nucleus_touches_border": flagged("nucleus_touches_border"),
        "decoded": sum(r.shares is not None for r in records),
    }


def _classes_of(pair: dict, by_id: Mapping[str, Record]) -> dict:
    a, b = by_id[pair["a"]].class_name, by_id[pair["b"]].class_name
    return {**pair, "classes": [a, b], "same_class": a == b}


def duplicate_summary(records: Sequence[Record], radius: int, search: int | None, min_match: float | None) -> dict:
    ids = [r.id for r in records]
    by_id = {r.id: r for r in records}
    groups = exact_groups(ids, [r.pixel_hash for r in records])
    exact = [_classes_of(p, by_id) for p in exact_pairs(groups)]
    near = near_pairs(ids, [r.phash for r in records], radius, [r.thumb for r in records], search, min_match,
                      exclude={frozenset((p["a"], p["b"])) for p in exact})
    near = [_classes_of({**p, "kind": "near"}, by_id) for p in near]
    linked = clusters([*exact, *near])
    return {
        # images linked by exact or confirmed near duplicates: copies of one field
        "clusters": linked,
        "n_duplicate_images": sum(len(c) for c in linked),
        "n_redundant_images": sum(len(c) - 1 for c in linked),
        "exact_groups": [{"ids": g, "classes": [by_id[i].class_name for i in g]} for g in groups],
        "exact_pairs": exact,
        "near_pairs": near,
        "n_exact_groups": len(groups),
        "n_exact_images": sum(len(g) for g in groups),
        "n_near_pairs": len(near),
        "n_near_confirmed": sum(p["confirmed"] for p in near),
        "label_conflicts": [p for p in [*exact, *near] if not p["same_class"]],
        "settings": {"phash_radius": radius, "search_radius": search, "min_match": min_match},
    }


def unchecked_listing(
    root: str | Path,
    layout: str = "csv",
    csv_name: str = "labels.csv",
    drop_classes: Iterable[str] = (),
    filters: Mapping | None = None,
    allow_outside_root: bool = False,
    max_pixels: int | None = None,
    bit_depth: int | str = "auto",
) -> list[Sample]:
    """The rows of a dataset whose listing `read_manifest` refuses for missing files or unknown
    classes, without those checks: the per-file scan then reports each missing file with the rest.
    Errors of the listing itself (no labels.csv, duplicate rows, files outside the root) still raise."""
    from wbc.data import manifest as mf

    root = Path(root)
    samples = mf._read_csv(root, csv_name, filters, allow_outside_root) if layout == "csv" else mf._read_folders(root, allow_outside_root)
    drop = set(drop_classes)
    return [replace(s, max_pixels=max_pixels, bit_depth=bit_depth) for s in samples if s.class_name not in drop]


def audit_samples(
    samples: Sequence[Sample],
    classes: Sequence[str],
    encoding: MaskEncoding,
    splits: Mapping | None = None,
    fold: int | None = None,
    radius: int = 6,
    search: int | None = 12,
    min_match: float | None = 0.98,
    oof: str | None = None,
    label_method: str = "auto",
    progress: Callable[[Iterable], Iterable] | None = None,
    meta: Mapping | None = None,
) -> dict:
    """The whole audit of `samples` (see the package doc); `splits`: the persisted split file's
    content (None: no leakage check), `fold`: the configured fold; `oof`: a CV sweep dir for label
    issues; `progress` wraps the per-file loop (a progress bar); `meta` is copied into "dataset"."""
    records = [scan_sample(s, encoding) for s in (progress or iter)(samples)]
    problems = [p for r in records for p in r.problems]
    dupes = duplicate_summary(records, radius, search, min_match)
    leaks = None
    if splits is not None:
        groups = {r.id: r.group for r in records}
        leaks = leakage([*dupes["exact_pairs"], *dupes["near_pairs"]], splits.get("test", []), splits.get("folds", []), fold, groups)
    issues = None
    if oof:
        from wbc.audit.labels import label_issues

        issues = label_issues(oof, {r.id: r.class_name for r in records}, label_method)
    report = {
        "dataset": {"n_samples": len(records), "classes": list(classes), "date": dt.date.today().isoformat(), **dict(meta or {})},
        "counts": class_counts(records, classes),
        "images": {
            "sizes": _counts(r.size for r in records if r.size),
            "modes": _counts(describe(r.image_info) for r in records),
            "mask_modes": _counts(describe(r.mask_info) for r in records if r.mask is not None),
        },
        "masks": mask_summary(records, classes),
        "problems": problems,
        "problems_by_kind": _counts(p["kind"] for p in problems),
        "duplicates": dupes,
        "leakage": leaks,
        "label_issues": issues,
        "samples": [sample_row(r) for r in records],
    }
    report["findings"] = findings(report)
    return report


def sample_row(r: Record) -> dict:
    """One sample's line in audit.json."""
    return {
        "id": r.id, "class": r.class_name, "group": r.group, "image": r.image, "mask": r.mask, "size": r.size,
        "mode": describe(r.image_info), "mask_mode": describe(r.mask_info) if r.mask else None,
        "nucleus_share": round(r.shares["nucleus"], 4) if r.shares else None,
        "cytoplasm_share": round(r.shares["cytoplasm"], 4) if r.shares else None,
        "phash": r.phash, "problems": [p["kind"] for p in r.problems], "mask_flags": sorted(r.mask_flags),
    }


def findings(report: Mapping) -> dict[str, int | None]:
    """The headline numbers (the summary table; 0 everywhere = a clean dataset)."""
    d, m, leaks = report["duplicates"], report["masks"], report["leakage"]
    issues = report["label_issues"]
    return {
        "bad_files": len({p["id"] for p in report["problems"]}),
        "exact_duplicate_groups": d["n_exact_groups"],
        "near_duplicate_pairs": d["n_near_pairs"],
        "near_duplicate_pairs_confirmed": d["n_near_confirmed"],
        "duplicate_clusters": len(d["clusters"]),
        "redundant_images": d["n_redundant_images"],
        "duplicate_label_conflicts": len(d["label_conflicts"]),
        "leaking_pairs_test": leaks["test_pairs"] if leaks else None,
        "leaking_pairs_cv": leaks["fold_pairs"] if leaks else None,
        "leaking_pairs_possible": leaks["possible_pairs"] if leaks else None,
        "leaking_groups": len(leaks["groups"]) if leaks else None,
        "empty_nucleus": len(m["empty_nucleus"]),
        "nucleus_outside_cytoplasm": len(m["nucleus_outside_cytoplasm"]),
        "nucleus_touches_border": len(m["nucleus_touches_border"]),
        "label_issues": len(issues["issues"]) if issues else None,
    }


def duplicate_clusters(samples: Sequence[Sample], radius: int = 6, search: int | None = 12, min_match: float | None = 0.98) -> list[list[str]]:
    """Ids of images that are copies of one field (exact pixels, or confirmed near duplicates with
    the audit's default settings, conf/audit.yaml): what data.splits.group_duplicates keeps on one
    side. Reads each image once; unreadable ones are left out (training reports them)."""
    from wbc.audit.scan import perceptual_hash, pixel_hash, thumbnail
    from wbc.data.imageio import ImageReadError, read_rgb

    ids, pixel, phash, thumbs = [], [], [], []
    for s in samples:
        try:
            rgb = read_rgb(Path(s.image), s.max_pixels, bit_depth=s.bit_depth)
        except (ImageReadError, OSError):
            continue
        ids.append(s.id)
        pixel.append(pixel_hash(rgb))
        phash.append(perceptual_hash(rgb))
        thumbs.append(thumbnail(rgb))
    exact = exact_pairs(exact_groups(ids, pixel))
    near = near_pairs(ids, phash, radius, thumbs, search, min_match, exclude={frozenset((p["a"], p["b"])) for p in exact})
    return clusters([*exact, *near])
