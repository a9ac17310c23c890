"""A run stopped twice: the second resume keeps the first attempt's learning-curve rows (they were in
metrics_before_resume.csv, which the second resume overwrote with the second attempt's alone)."""

from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import OmegaConf

from wbc.fit import BEFORE_RESUME, resume_from


def write_csv(path: Path, epochs: range) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "step", "train/loss"])
        w.writerows([[e, 4 * e + 3, 1.0 / (e + 1)] for e in epochs])


def test_a_second_resume_keeps_every_attempts_epochs(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "csv").mkdir()
    write_csv(tmp_path / "csv" / BEFORE_RESUME, range(0, 2))  # the first attempt, kept by the first resume
    write_csv(tmp_path / "csv" / "metrics.csv", range(2, 4))  # the second attempt, stopped too
    cfg = OmegaConf.create({"ckpt_path": None, "resume": True, "train": True, "stage": "segmentation"})
    assert resume_from(cfg, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    with open(tmp_path / "csv" / BEFORE_RESUME, newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2, 3]
    assert not (tmp_path / "csv" / "metrics.csv").exists()
