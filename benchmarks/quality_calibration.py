"""The pooled out-of-fold crops of a classification sweep, as `benchmarks/quality.py`'s calibration
table (issue 14) reads them: each fold's validation predictions with the temperature it stored."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def calibrated_oof(jobs: list[Path]) -> tuple[list[list[float]], list[int], list[int], list[float]] | None:
    """Every fold job's validation crops (val_predictions.csv, calibrated by that fold's temperature),
    their labels, fold index, and each fold's temperature (test_calibration.json)."""
    probs, labels, fold_of, temps = [], [], [], []
    for d in jobs:
        oof, cal = d / "val_predictions.csv", d / "test_calibration.json"
        if not (oof.is_file() and cal.is_file()):
            continue
        temps.append(float(json.loads(cal.read_text())["calibration"].get("temperature", 1.0)))
        with open(oof, newline="") as fh:
            reader = csv.DictReader(fh)
            classes = [h[2:] for h in reader.fieldnames or [] if h.startswith("p_")]
            for r in reader:
                probs.append([float(r[f"p_{c}"]) for c in classes])
                labels.append(classes.index(r["true"]))
                fold_of.append(len(temps) - 1)
    return (probs, labels, fold_of, temps) if probs else None
