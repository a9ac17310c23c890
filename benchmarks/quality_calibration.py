"""The calibration table of `benchmarks/quality.py` (issue 14): a classification sweep's pooled
out-of-fold crops (each fold's validation predictions with the temperature it stored) and its test
figures, before and after temperature scaling, with the review flags."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def calibrated_oof(jobs: list[Path]) -> tuple[list[list[float]], list[int], list[int], list[float], list[list[float]] | None] | None:
    """Every fold job's validation crops (val_predictions.csv, calibrated by that fold's temperature),
    their labels, fold index, each fold's temperature (test_calibration.json), and the probabilities
    before it when every file has them (else None: runs written before those columns)."""
    from wbc.evaluation.classification import (
        has_uncalibrated,
        prediction_arrays,
        probability_array,
        read_predictions_csv,
    )

    probs, labels, fold_of, temps, raws = [], [], [], [], []
    complete = True
    for d in jobs:
        oof, cal = d / "val_predictions.csv", d / "test_calibration.json"
        if not (oof.is_file() and cal.is_file()):
            continue
        temps.append(float(json.loads(cal.read_text())["calibration"].get("temperature", 1.0)))
        classes, rows = read_predictions_csv(oof)
        p, y = prediction_arrays(rows, classes)
        probs += p.tolist()
        labels += y.tolist()
        fold_of += [len(temps) - 1] * len(rows)
        complete = complete and has_uncalibrated(rows, classes)
        if complete:
            raws += probability_array(rows, classes, uncalibrated=True).tolist()
    return (probs, labels, fold_of, temps, raws if complete else None) if probs else None


def _values(runs: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]


def calibration_table(sweeps: list[tuple[str, Path]]) -> str:
    """Issue 14's figures for the classification rows: ECE (15 bins, bootstrap 95 %), NLL, Brier
    before / after temperature scaling on the pooled out-of-fold crops -- in-sample (each fold's
    own temperature, fitted on those crops) and cross-fitted (each fold's crops get the temperature
    fitted on the other folds' pooled crops: the honest figure) -- and on the test split (fold
    models, mean; fold ensemble); then the review flags: share flagged by the models' thresholds,
    error of the kept vs all cells, error at 90 % coverage, AURC. `sweeps`: (row key, sweep dir) of
    the classification rows; a sweep's jobs are its dirs holding job.json."""
    import numpy as np

    from wbc.calibration import (
        apply_temperature,
        bootstrap_ece,
        brier,
        ece,
        fit_temperature,
        nll,
        risk_at_coverage,
        risk_coverage,
    )

    lines = [
        "| row | split | ECE before | ECE after [95 % CI] | NLL before -> after | Brier before -> after | flagged | error kept / all | error at 90 % coverage | AURC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fig(p: np.ndarray, y: np.ndarray, raw: np.ndarray, thr: float | None) -> list[str]:
        lo, hi = bootstrap_ece(p, y)
        conf, ok = p.max(1), p.argmax(1) == y
        kept = conf >= (thr or 0.0)
        flagged = f"{1 - kept.mean():.1%}" if thr is not None else "—"
        return [f"{ece(raw, y):.4f}", f"**{ece(p, y):.4f}** [{lo:.3f}, {hi:.3f}]", f"{nll(raw, y):.3f} -> {nll(p, y):.3f}",
                f"{brier(raw, y):.3f} -> {brier(p, y):.3f}", flagged, f"{1 - ok[kept].mean():.3f} / {1 - ok.mean():.3f}",
                f"{risk_at_coverage(conf, ok, 0.9):.3f}", f"{risk_coverage(conf, ok)[2]:.4f}"]

    for key, sweep in sweeps:
        jobs = sorted(p.parent for p in sweep.glob("*/job.json"))
        got = calibrated_oof(jobs)
        if got is None:
            continue
        probs, labels, fold_of, temps, raws = got
        p, y, f = np.asarray(probs), np.asarray(labels), np.asarray(fold_of)  # rows in fold order
        # before the temperature: as written next to the calibrated columns; older runs' are recovered by
        # undoing T, which fails where T < 1 saturated the 5 written decimals (a fold with no validation error)
        raw = np.asarray(raws) if raws is not None else np.concatenate([apply_temperature(p[f == k], 1 / t) for k, t in enumerate(temps)])
        cross = np.concatenate([apply_temperature(raw[f == k], fit_temperature(raw[f != k], y[f != k])) for k in range(len(temps))])
        lines.append(f"| {key} ({sweep.name}) | CV OOF, in-sample T | " + " | ".join(fig(p, y, raw, None)) + " |")
        lines.append(f"| {key} ({sweep.name}) | CV OOF, cross-fitted T | " + " | ".join(fig(cross, y, raw, None)) + " |")
        runs = [json.loads((d / "metrics.json").read_text()) for d in jobs if (d / "metrics.json").is_file()]
        mean = {k: statistics.mean(_values(runs, k)) for k in ("test/uncalibrated/ece", "test/ece", "test/review/flagged", "test/review/error_kept",
                                                              "test/review/error_all", "test/review/error_at_90", "test/review/aurc") if _values(runs, k)}
        if mean:
            lines.append(
                f"| {key} ({sweep.name}) | test, fold models (mean) | {mean.get('test/uncalibrated/ece', float('nan')):.4f} | **{mean.get('test/ece', float('nan')):.4f}** | | | "
                f"{mean.get('test/review/flagged', float('nan')):.1%} | {mean.get('test/review/error_kept', float('nan')):.3f} / {mean.get('test/review/error_all', float('nan')):.3f} | "
                f"{mean.get('test/review/error_at_90', float('nan')):.3f} | {mean.get('test/review/aurc', float('nan')):.4f} |"
            )
        ens = sweep / "ensemble_test" / "metrics.json"
        if ens.is_file():
            m = json.loads(ens.read_text())
            lines.append(
                f"| {key} ({sweep.name}) | test, fold ensemble | {m.get('test/uncalibrated/ece', float('nan')):.4f} | **{m.get('test/ece', float('nan')):.4f}** "
                f"[{m.get('test/ece_lo', float('nan')):.3f}, {m.get('test/ece_hi', float('nan')):.3f}] | {m.get('test/uncalibrated/nll', float('nan')):.3f} -> {m.get('test/nll', float('nan')):.3f} | "
                f"{m.get('test/uncalibrated/brier', float('nan')):.3f} -> {m.get('test/brier', float('nan')):.3f} | {m.get('test/review/flagged', float('nan')):.1%} | "
                f"{m.get('test/review/error_kept', float('nan')):.3f} / {m.get('test/review/error_all', float('nan')):.3f} | {m.get('test/review/error_at_90', float('nan')):.3f} | {m.get('test/review/aurc', float('nan')):.4f} |"
            )
    return "\n".join(lines)
