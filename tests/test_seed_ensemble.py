"""benchmarks/seed_ensemble.py: runs of one fold are averaged on the same validation crops."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers_data import add_uncalibrated_columns

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def seed_ensemble(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import seed_ensemble

    return seed_ensemble


def fake_run(root: Path, fold: int, probs: dict[str, tuple[str, float]]) -> Path:
    """A run dir whose validation crops (id -> (true class, p of "a")) are scored a vs b."""
    root.mkdir(parents=True)
    (root / "job.json").write_text(json.dumps({"fold": fold}))
    test = {"t1": ("a", 0.6), "t2": ("b", 0.45 if fold else 0.6)}  # one test split, scored by every model
    for split, rows in (("val", probs), ("test", test)):
        with (root / f"{split}_predictions.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", "cell", "true", "pred", "p_a", "p_b"])
            for sid, (true, pa) in rows.items():
                w.writerow([sid, 1, true, "a" if pa >= 0.5 else "b", pa, 1 - pa])
    return root


def test_the_ensemble_averages_probabilities_fold_by_fold(seed_ensemble, tmp_path: Path, capsys) -> None:
    # fold 0: run 1 misses x2 narrowly (0.4), run 2 is sure of it (0.9) -> the average (0.65) gets it right
    fake_run(tmp_path / "s1" / "0", 0, {"x1": ("a", 0.9), "x2": ("a", 0.4), "x3": ("b", 0.1)})
    fake_run(tmp_path / "s2" / "0", 0, {"x1": ("a", 0.8), "x2": ("a", 0.9), "x3": ("b", 0.2)})
    fake_run(tmp_path / "s1" / "1", 1, {"y1": ("a", 0.9), "y2": ("b", 0.3)})
    fake_run(tmp_path / "s2" / "1", 1, {"y1": ("a", 0.7), "y2": ("b", 0.4)})
    assert seed_ensemble.main([str(tmp_path / "s1"), str(tmp_path / "s2")]) == 0
    out = capsys.readouterr().out
    assert "| 0 | 2 | 0.833 (0.667 / 1.000) | 1.000 |" in out
    assert "CV macro-F1: members 0.917, ensemble 1.000 ± 0.000; pooled out-of-fold 1.000" in out
    assert "CV balanced accuracy: members 0.9375, ensemble 1.0000" in out  # fold 0: run 1 (1/2 + 1) / 2, run 2 1; fold 1: 1
    # test: t2's p(a) averages (0.6 + 0.6 + 0.45 + 0.45) / 4 = 0.525 -> called a, wrongly
    assert "a 1.00 (3/3)" in out and "test macro-F1, all 4 models averaged: 0.333" in out


def test_folds_with_different_run_counts_or_crops_are_refused(seed_ensemble, tmp_path: Path) -> None:
    fake_run(tmp_path / "s1" / "0", 0, {"x1": ("a", 0.9)})
    fake_run(tmp_path / "s1" / "1", 1, {"y1": ("a", 0.9)})
    fake_run(tmp_path / "s2" / "0", 0, {"x1": ("a", 0.9)})
    with pytest.raises(SystemExit, match=r"same number of runs; found \{0: 2, 1: 1\}"):
        seed_ensemble.main([str(tmp_path / "s1"), str(tmp_path / "s2")])
    fake_run(tmp_path / "s2" / "1", 1, {"other": ("a", 0.9)})
    with pytest.raises(SystemExit, match=r"s2/1/val_predictions.csv: not the same classes and crops"):
        seed_ensemble.main([str(tmp_path / "s1"), str(tmp_path / "s2")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: no job.json"):
        seed_ensemble.main([str(tmp_path / "empty")])


def test_validation_crops_are_averaged_before_each_runs_temperature(seed_ensemble, tmp_path: Path, capsys) -> None:
    """Each run's temperature was fitted on its fold's validation crops: a run wrong on x2 got a large one
    there, which softened its error and let the calibrated average call x2 right (a figure that knew the
    label). The probabilities before the temperatures are what the ensemble figure averages."""
    def with_raw(run: Path, raw: dict[str, float]) -> None:
        add_uncalibrated_columns(run / "val_predictions.csv", raw)

    # calibrated: (0.45 + 0.7) / 2 = 0.575 -> a (right); before the temperatures: (0.05 + 0.8) / 2 = 0.425 -> b
    with_raw(fake_run(tmp_path / "s1" / "0", 0, {"x1": ("a", 0.9), "x2": ("a", 0.45)}), {"x1": 0.99, "x2": 0.05})
    with_raw(fake_run(tmp_path / "s2" / "0", 0, {"x1": ("a", 0.8), "x2": ("a", 0.7)}), {"x1": 0.85, "x2": 0.8})
    assert seed_ensemble.main([str(tmp_path / "s1"), str(tmp_path / "s2")]) == 0
    out = capsys.readouterr().out
    assert "averaged before each run's temperature" in out and "WARNING" not in out
    # x2 called b: F1 over the classes true or predicted (metrics.json's), b predicted only counts 0
    assert "| 0 | 2 | 0.667 (0.333 / 1.000) | 0.333 |" in out
    (tmp_path / "s2" / "0" / "val_predictions.csv").write_text(  # a run from before the columns: calibrated, said so
        "sample_id,cell,true,pred,p_a,p_b\nx1,1,a,a,0.8,0.2\nx2,1,a,a,0.7,0.3\n")
    assert seed_ensemble.main([str(tmp_path / "s1"), str(tmp_path / "s2")]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "optimistic" in out and "| 0 | 2 | 0.667 (0.333 / 1.000) | 1.000 |" in out
