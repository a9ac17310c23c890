"""CV figure of an ensemble of finished classifier runs (training seeds, machines, levers) fold by fold.

The persisted split does not depend on the training seed, so every run of fold k scored the same
validation crops: averaging their class probabilities (`val_predictions.csv`) gives the ensemble's
out-of-fold prediction for fold k, a CV figure to decide on, next to the members' own. The validation
probabilities averaged are those before each run's temperature (the `uncalibrated_p_` columns): the
temperature was fitted on these very crops, and averaging calibrated members let it pick the ensemble's
answer (ALL-IDB2, 3 seeds: CV balanced accuracy 0.983 calibrated vs 0.977 before the temperatures). Runs written before
those columns existed are averaged calibrated, with a warning that the figure is optimistic. The test
figure averages every member's `test_predictions.csv` (all folds' models: the fold ensemble of all runs).

    python benchmarks/seed_ensemble.py outputs/quality/cls_wbc_s42_<ts> outputs/quality/cls_wbc_s43_<ts>

Each argument is a run dir (job.json + val_predictions.csv, as train.py writes) or a sweep dir
holding such run dirs. Prints macro-F1 per fold (members' mean and the ensemble), the CV mean ± std,
the pooled out-of-fold macro-F1 and recall per class. Macro-F1 is metrics.json's (benchmarks/bench_stats.py:
the classes true or predicted), so these figures compare with the runs' own. No training, seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from bench_stats import macro_f1
from sklearn.metrics import recall_score

from wbc.evaluation.classification import has_uncalibrated, probability_array, read_predictions_csv

Predictions = dict[tuple[str, str], tuple[str, np.ndarray]]  # (sample_id, cell) -> (true, probabilities)


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run dirs named, or held one level down by the sweep dirs named."""
    found = []
    for p in paths:
        runs = [p] if (p / "job.json").is_file() else sorted(d for d in p.iterdir() if (d / "job.json").is_file())
        if not runs:
            raise SystemExit(f"{p}: no job.json there or in its subfolders; expected a train.py run or sweep dir")
        found += runs
    return found


def read_predictions(path: Path, uncalibrated: bool = False) -> tuple[list[str], Predictions]:
    """Classes (from the p_<class> columns) and each crop's true label and probabilities (`uncalibrated`:
    before the run's temperature)."""
    classes, rows = read_predictions_csv(path)
    if not classes or not rows or not {"sample_id", "cell", "true"} <= rows[0].keys():
        raise SystemExit(f"{path}: expected rows with sample_id, cell, true and p_<class> columns (as train.py writes them)")
    probs = probability_array(rows, classes, uncalibrated)
    return classes, {(r["sample_id"], r["cell"]): (r["true"], p) for r, p in zip(rows, probs)}


def all_uncalibrated(files: list[Path]) -> bool:
    """Whether every file has the probabilities before its run's temperature."""
    for f in files:
        classes, rows = read_predictions_csv(f)
        if not has_uncalibrated(rows, classes):
            return False
    return True


def mean_probabilities(files: list[Path], why: str, uncalibrated: bool = False) -> tuple[list[str], dict[tuple[str, str], tuple[str, np.ndarray]]]:
    """(classes, {(sample_id, cell): (true label, mean probabilities)}) over the crops every file scored
    (all the same crops, or SystemExit naming the odd file and `why` they must match)."""
    read = [read_predictions(f, uncalibrated) for f in files]
    classes, first = read[0]
    for f, (cls, rows) in zip(files[1:], read[1:]):
        if cls != classes or rows.keys() != first.keys():
            raise SystemExit(f"{f}: not the same classes and crops as {files[0]}; {why}")
    return classes, {k: (first[k][0], np.mean([rows[k][1] for _, rows in read], axis=0)) for k in sorted(first)}


def average(files: list[Path], why: str = "runs of one fold must share its split", uncalibrated: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(classes, true labels, ensemble predictions) over the crops every file scored (all the same crops)."""
    classes, mean = mean_probabilities(files, why, uncalibrated)
    return classes, [t for t, _ in mean.values()], [classes[int(np.argmax(p))] for _, p in mean.values()]


def balanced_accuracy(true: list[str], pred: list[str], classes: list[str]) -> float:
    """Mean recall over the classes present (the ALL-IDB2 row's metric)."""
    present = [c for c in classes if c in true]
    return float(recall_score(true, pred, labels=present, average="macro", zero_division=0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="run or sweep dirs of classifier runs")
    args = ap.parse_args(argv)
    by_fold: dict[int, list[Path]] = defaultdict(list)
    for run in run_dirs(args.paths):
        by_fold[int(json.loads((run / "job.json").read_text())["fold"])].append(run)
    sizes = {f: len(r) for f, r in by_fold.items()}
    if len(set(sizes.values())) != 1:
        raise SystemExit(f"every fold needs the same number of runs; found {dict(sorted(sizes.items()))}")
    pooled_true: list[str] = []
    pooled_pred: list[str] = []
    members_cv, ensemble_cv, members_ba, ensemble_ba = [], [], [], []
    raw = all_uncalibrated([r / "val_predictions.csv" for runs in by_fold.values() for r in runs])
    print("validation probabilities averaged before each run's temperature" if raw else
          "WARNING: some runs' val_predictions.csv lack the probabilities before the temperature (runs from before they were "
          "written): calibrated ones are averaged, and each run's temperature was fitted on these very crops, so the "
          "ensemble figure below is optimistic")
    print("| fold | runs | members' macro-F1 (mean) | ensemble macro-F1 |\n|---|---|---|---|")
    for fold in sorted(by_fold):
        files = [r / "val_predictions.csv" for r in by_fold[fold]]
        classes, true, pred = average(files, uncalibrated=raw)
        alone = [average([f])[1:] for f in files]  # each run's own (true, pred)
        own = [macro_f1(*tp, classes) for tp in alone]
        members_cv.append(statistics.mean(own))
        ensemble_cv.append(macro_f1(true, pred, classes))
        members_ba.append(statistics.mean(balanced_accuracy(*tp, classes) for tp in alone))
        ensemble_ba.append(balanced_accuracy(true, pred, classes))
        pooled_true += true
        pooled_pred += pred
        print(f"| {fold} | {len(files)} | {members_cv[-1]:.3f} ({' / '.join(f'{x:.3f}' for x in own)}) | {ensemble_cv[-1]:.3f} |")
    # one fold has no spread to quote (wbc/cv.py's std is null there), not a spread of 0
    sd = f"± {statistics.stdev(ensemble_cv):.3f}" if len(ensemble_cv) > 1 else "(n=1)"
    print(f"\nCV macro-F1: members {statistics.mean(members_cv):.3f}, ensemble {statistics.mean(ensemble_cv):.3f} {sd}"
          f"; pooled out-of-fold {macro_f1(pooled_true, pooled_pred, classes):.3f}")
    print(f"CV balanced accuracy: members {statistics.mean(members_ba):.4f}, ensemble {statistics.mean(ensemble_ba):.4f}")
    recall = recall_score(pooled_true, pooled_pred, labels=classes, average=None, zero_division=0)
    counts = {c: (sum(t == c == p for t, p in zip(pooled_true, pooled_pred)), pooled_true.count(c)) for c in classes}
    print("pooled recall: " + ", ".join(f"{c} {r:.2f} ({counts[c][0]}/{counts[c][1]})" for c, r in zip(classes, recall)))
    tests = [r / "test_predictions.csv" for runs in by_fold.values() for r in runs]
    if all(t.is_file() for t in tests):
        classes, true, pred = average(tests, "every model must have scored the same test split")
        print(f"test macro-F1, all {len(tests)} models averaged: {macro_f1(true, pred, classes):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
