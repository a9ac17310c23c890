"""Sweep summaries and run-dir guards on fabricated run dirs (wbc.cv, wbc.rundir, wbc.resume): a sweep on
one fixed fold is not CV, pooled OOF rows name their group, a finished job is labelled with the overrides
it ran with (job.json), and a non-resume job refuses a run dir that holds results."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from tests.test_cv_summary import case, fake_run
from wbc import cv, resume, rundir


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_sweep_on_one_fixed_fold_is_not_cv(tmp_path: Path) -> None:
    """`-m data.fold=0 model.optimizer.lr=a,b` (or an Optuna search on one fold): one table of trials,
    no n=1 CV groups, no out-of-fold pooling of the same validation images twice."""
    sweep = tmp_path / "sweep"
    for job, lr in enumerate((0.001, 0.003)):
        fake_run(sweep, job, 0, {"val/dice_best": 0.1 * (job + 1)}, overrides=[f"model.optimizer.lr={lr}"], cases=[case("a", 0.5), case("b", 0.4)])
    s = cv.summarize_sweep(sweep)
    assert s["kind"] == "sweep" and "groups" not in s and s["n_ok"] == 2
    assert s["oof"] == {}
    json_path, _ = cv.write_summary(s, sweep)
    assert json_path.name == "sweep_summary.json"


def test_oof_tables_name_the_group_and_pool_each_group_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sweep = tmp_path / "grid"
    for job, (lr, fold) in enumerate([(0.1, 0), (0.1, 1), (0.01, 0), (0.01, 1)]):
        fake_run(sweep, job, fold, {"val/dice": 0.5}, overrides=[f"model.optimizer.lr={lr}"], cases=[case(f"id{fold}", 0.5)])
    jobs = cv.read_sweep(sweep)
    s = cv.summarize_jobs(jobs, sweep)
    assert s["kind"] == "cv" and len(s["groups"]) == 2
    assert all(g["oof"]["segmentation"]["n_cases"] == g["oof"]["segmentation"]["n_unique_cases"] == 2 for g in s["groups"])
    table = cv.write_oof_tables(jobs, sweep)[0]
    rows = _rows(table)
    assert next(iter(rows[0])) == "group"
    assert sorted((r["group"], r["id"]) for r in rows) == [
        ("model.optimizer.lr=0.01", "id0"), ("model.optimizer.lr=0.01", "id1"), ("model.optimizer.lr=0.1", "id0"), ("model.optimizer.lr=0.1", "id1")]
    # overlapping validation folds within one group: said
    dup = tmp_path / "dup"
    for fold in (0, 1):
        fake_run(dup, fold, fold, {"val/dice": 0.5}, cases=[case("same", 0.5)])
    with caplog.at_level(logging.WARNING, logger="wbc"):
        cv.summarize_sweep(dup)
    assert "2 segmentation out-of-fold cases but only 1 distinct" in caplog.text


def test_a_finished_job_keeps_the_overrides_it_ran_with(tmp_path: Path) -> None:
    """Hydra rewrites .hydra/overrides.yaml on a resume launch that skips the finished job; job.json is
    the record of the job that produced metrics.json."""
    run = fake_run(tmp_path / "sweep", 0, 0, {"val/dice": 0.5}, overrides=["trainer.max_epochs=3", "resume=true"])
    (run / "job.json").write_text(json.dumps({"fold": 0, "stage": "segmentation", "overrides": ["data.fold=0", "trainer.max_epochs=1"]}))
    job = cv.read_job(run)
    assert job.overrides == ["data.fold=0", "trainer.max_epochs=1"] and job.group == ("trainer.max_epochs=1",)


def test_differing_overrides_name_the_keys_not_neutral_ones(tmp_path: Path) -> None:
    rundir.start_job(tmp_path, resume.job_record(0, "segmentation", ["data.fold=0", "trainer.max_epochs=1", "logger=csv"]))
    new = resume.job_record(0, "segmentation", ["data.fold=0", "trainer.max_epochs=3", "resume=true", "logger=wandb", "hydra.verbose=true"])
    assert resume.differing_overrides(tmp_path, new) == ["trainer.max_epochs: 1 -> 3"]
    same = resume.job_record(0, "segmentation", ["data.fold=0", "trainer.max_epochs=1", "resume=true"])
    assert resume.differing_overrides(tmp_path, same) == []


@pytest.mark.parametrize("left", ["metrics.json", "checkpoints/last.ckpt", "segmentation/checkpoints/epoch_000.ckpt"])
def test_a_run_dir_with_results_is_refused_without_resume(tmp_path: Path, left: str) -> None:
    run = tmp_path / "0"
    (run / left).parent.mkdir(parents=True, exist_ok=True)
    (run / left).write_text("{}")
    with pytest.raises(FileExistsError, match=rf"{run} already holds results .*resume=true.*new hydra.sweep.dir"):
        rundir.check_fresh(run, multirun=True)
    assert (run / left).read_text() == "{}"


def test_a_fresh_or_failed_run_dir_may_start(tmp_path: Path) -> None:
    rundir.check_fresh(tmp_path / "new")
    failed = tmp_path / "failed"
    (failed / "checkpoints").mkdir(parents=True)
    (failed / "FAILED").write_text("boom")
    rundir.check_fresh(failed)


def test_a_run_continued_in_place_may_start(tmp_path: Path) -> None:
    """`ckpt_path=<run>/checkpoints/last.ckpt` into the same run dir continues that run (test_faults' way)."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    rundir.check_fresh(tmp_path, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(FileExistsError):
        rundir.check_fresh(tmp_path, ckpt_path=tmp_path.parent / "other" / "last.ckpt")
