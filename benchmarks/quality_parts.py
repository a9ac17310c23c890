"""Per-set figures of a segmenter trained on several sets at once (`data=combined`, e.g.
`experiment=quality_seg_combined`). Each fold scores its validation and test images one by one
(`val_eval` / `test_eval` summary.json) and their ids carry the set (`<part>/<id>`), so every set gets
its own CV mean over folds and test mean, the same per-image mean Dice as its own row (`quality_seg_d1`, ...)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


def part_means(job: Path, split: str) -> dict[str, float]:
    """Mean per-image Dice (post-processed, original resolution) of one fold's split, per set; {} when
    the fold has no such evaluation. Images whose truth and prediction are both empty (NaN) are left out."""
    path = job / f"{split}_eval" / "summary.json"
    if not path.is_file():
        return {}
    by_part: dict[str, list[float]] = defaultdict(list)
    for case in json.loads(path.read_text()).get("metric_per_case") or []:
        dice = case.get("dice")
        if isinstance(dice, int | float) and not math.isnan(dice) and "/" in str(case.get("id", "")):
            by_part[str(case["id"]).split("/", 1)[0]].append(float(dice))
    return {part: statistics.mean(v) for part, v in sorted(by_part.items())}


def parts_table(label: str, jobs: list[Path], fmt: Callable[[list[float]], str], targets: dict[str, float] | None = None) -> str:
    """One line per set: its validation Dice fold by fold (jobs in fold order), their mean against the
    set's own target (`targets`, by set name; a combined model is judged per set, as each set's own
    row is), and the fold models' mean on its test split (`fmt`: how quality.py writes mean +- std)."""
    val: dict[str, list[float]] = defaultdict(list)
    test: dict[str, list[float]] = defaultdict(list)
    for job in jobs:
        for part, m in part_means(job, "val").items():
            val[part].append(m)
        for part, m in part_means(job, "test").items():
            test[part].append(m)
    lines = [f"| {label}: set | CV validation, fold by fold | CV validation, mean | test, fold models |", "|---|---|---|---|"]
    for part in sorted(val.keys() | test.keys()):
        folds = " / ".join(f"{v:.4f}" for v in val[part]) or "n/a"
        target = (targets or {}).get(part)
        verdict = "" if target is None or not val[part] else f" [>= {target}: {'meets' if statistics.mean(val[part]) >= target else 'below'}]"
        lines.append(f"| {part} | {folds} | {fmt(val[part])}{verdict} | {fmt(test[part])} |")
    return "\n".join(lines) if len(lines) > 2 else ""
