"""Macro-F1 in the benchmark scripts is metrics.json's: the classes true or predicted at least once, a
predicted-only class counting 0 and one neither true nor predicted left out. seed_ensemble.py counted only
the classes in the truth and cross_dataset.py all four, so one set of calls had three macro-F1s."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from wbc.evaluation.classification import classification_report

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c", "d"]
TRUE = np.array([0, 0, 0, 1, 1, 1])  # c and d never true ...
PRED = np.array([0, 0, 2, 1, 1, 2])  # ... c predicted twice, d never


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The benchmarks dir importable; cross_dataset's run dirs under tmp_path."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cross_dataset

    monkeypatch.setattr(cross_dataset, "ROOT", tmp_path)
    return cross_dataset


def product_macro_f1(true: np.ndarray, pred: np.ndarray, n: int) -> float:
    """What metrics.json holds for these calls (torchmetrics through classification_report)."""
    probs = np.eye(n)[pred] * 0.8 + 0.2 / n
    return classification_report(probs, true, [str(i) for i in range(n)], "val")["val/macro_f1"]


def test_shared_macro_f1_is_the_products(bench) -> None:
    from bench_stats import macro_f1

    names = [CLASSES[i] for i in TRUE], [CLASSES[i] for i in PRED]
    # a, b: 4/5 each (each lost one crop to c); c predicted only: 0; d neither: left out
    assert macro_f1(*names, CLASSES) == pytest.approx((4 / 5 + 4 / 5 + 0) / 3)
    assert macro_f1(*names, CLASSES) == pytest.approx(product_macro_f1(TRUE, PRED, 4), abs=1e-6)
    assert macro_f1(TRUE, PRED, range(4)) == pytest.approx(macro_f1(*names, CLASSES))  # class indices, as prior_em_row
    rng = np.random.default_rng(0)
    for _ in range(20):
        true, pred = rng.integers(0, 5, 12), rng.integers(0, 5, 12)
        assert macro_f1(true, pred, range(6)) == pytest.approx(product_macro_f1(true, pred, 6), abs=1e-6)
    assert np.isnan(macro_f1([], [], CLASSES))


def write_run(root: Path, fold: int, rows: list[tuple[str, str]]) -> Path:
    """A run dir whose validation crops (true, predicted) are scored over CLASSES, sure of each call."""
    root.mkdir(parents=True)
    (root / "job.json").write_text(json.dumps({"fold": fold}))
    with (root / "val_predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "cell", "true", "pred", *(f"p_{c}" for c in CLASSES)])
        for i, (true, pred) in enumerate(rows):
            w.writerow([f"s{i}", 1, true, pred, *(0.9 if c == pred else 0.1 / 3 for c in CLASSES)])
    return root


def test_seed_ensemble_scores_a_predicted_only_class_as_metrics_json_does(bench, tmp_path: Path, capsys) -> None:
    import seed_ensemble

    calls = [(CLASSES[t], CLASSES[p]) for t, p in zip(TRUE, PRED)]
    write_run(tmp_path / "s1" / "0", 0, calls)
    assert seed_ensemble.main([str(tmp_path / "s1")]) == 0
    out = capsys.readouterr().out
    assert "| 0 | 1 | 0.533 (0.533) | 0.533 |" in out  # (4/5 + 4/5 + 0) / 3, not 0.800 over a and b alone


def test_seed_ensemble_gives_no_spread_for_one_fold(bench, tmp_path: Path, capsys) -> None:
    """One fold: n=1 (wbc/cv.py's std is null), not a spread of 0."""
    import seed_ensemble

    write_run(tmp_path / "s1" / "0", 0, [("a", "a"), ("b", "b")])
    assert seed_ensemble.main([str(tmp_path / "s1")]) == 0
    out = capsys.readouterr().out
    assert "ensemble 1.000 (n=1);" in out and "±" not in out
    write_run(tmp_path / "s1" / "1", 1, [("a", "a"), ("b", "a")])
    assert seed_ensemble.main([str(tmp_path / "s1")]) == 0
    assert "ensemble 0.667 ± 0.471;" in capsys.readouterr().out


def held_out_run(cross, rows: list[tuple[str, list[float]]], val: list[tuple[str, list[float]]]) -> None:
    """A cross-dataset run's held-out (test_predictions.csv) and own validation (val_predictions.csv) crops."""
    out = cross.run_dir("d1_to_d2", "cells_grey", "dev", 42)
    out.mkdir(parents=True)
    for name, crops in (("test", rows), ("val", val)):
        with open(out / f"{name}_predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", "cell", "true", "pred", *(f"p_{c}" for c in cross.CLASSES)])
            for i, (true, p) in enumerate(crops):
                w.writerow([f"s{i}", 1, true, cross.CLASSES[p.index(max(p))], *p])


def test_cross_dataset_rows_leave_out_a_class_neither_true_nor_predicted(bench) -> None:
    """Held-out crops of neutrophils and lymphocytes, all called right: macro-F1 1.0 as metrics.json has it,
    not 0.5 (monocyte and eosinophil, never true nor predicted, counted 0)."""
    crops = [("neutrophil", [0.7, 0.1, 0.1, 0.1]), ("lymphocyte", [0.1, 0.7, 0.1, 0.1])]
    held_out_run(bench, crops, [("neutrophil", [0.25] * 4)])
    line = bench.prior_em_row("d1_to_d2", "cells_grey", "dev", 42)
    assert "| 1.000 (without: 1.000) |" in line
    out = bench.run_dir("d1_to_d2", "cells_grey", "dev", 42)
    (out.parent / f"{out.name}_adabn").mkdir()
    (out.parent / f"{out.name}_adabn" / "test_predictions.csv").write_text((out / "test_predictions.csv").read_text())
    assert bench.ensemble_row("d1_to_d2", ["cells_grey"], "dev", [42], "adabn").split(" | ")[3] == "1.000"
