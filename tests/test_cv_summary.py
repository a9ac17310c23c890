"""wbc.cv's pure functions on fabricated run dirs: CV summaries (mean, sample std, failed folds, pooled
out-of-fold cases and crops), settings grouping, failure markers and the dashboard summaries."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from wbc import cv, cv_dashboards, resume, rundir


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- wbc.cv, pure
def fake_run(sweep: Path, job: int, fold, metrics: dict | None = None, failed: str | None = None, overrides=(), cases=None, preds=None) -> Path:
    run = sweep / str(job)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"stage": "segmentation", "data": {"fold": fold}}), run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"data.fold={fold}", *overrides]), run / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (run / "FAILED").write_text(failed)
    if cases is not None:
        (run / "val_eval").mkdir()
        (run / "val_eval" / "summary.json").write_text(json.dumps({"metric_per_case": cases}))
    if preds is not None:
        lines = ["sample_id,cell,true,pred,p_a,p_b"] + [f"{sid},1,{t},{'a' if pa >= 0.5 else 'b'},{pa},{1 - pa}" for sid, t, pa in preds]
        (run / "val_predictions.csv").write_text("\n".join(lines) + "\n")
    return run


def case(i: str, dice, cls: str = "x") -> dict:
    return {"id": i, "class_name": cls, "dice": dice, "iou": dice, "dice_raw": dice, "iou_raw": dice}


def test_summary_statistics_failed_folds_and_pooled_oof(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fake_run(sweep, 0, 0, {"val/dice": 0.5, "test/dice_post": 0.6, "train/loss": 1.0, "best_checkpoint": "x"}, cases=[case("a", 1.0), case("b", None)])
    fake_run(sweep, 1, 1, {"val/dice": 0.7, "test/dice_post": None}, cases=[case("c", 0.0), case("d", 0.5, "y"), case("e", 0.5, "y")])
    fake_run(sweep, 2, 2, {"val/dice": 0.9}, failed="RuntimeError: boom\n\ntraceback")
    fake_run(sweep, 3, 3)  # killed: no metrics.json
    s = cv.summarize_sweep(sweep)
    assert s["kind"] == "cv" and s["folds"] == [0, 1] and s["failed_folds"] == [2, 3]
    assert s["failed"][0]["reason"] == "RuntimeError: boom" and "no metrics.json" in s["failed"][1]["reason"]
    assert s["mean"]["val/dice"] == pytest.approx(0.6) and s["std"]["val/dice"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert s["mean"]["test/dice_post"] == pytest.approx(0.6) and s["std"]["test/dice_post"] is None and s["n"]["test/dice_post"] == 1
    assert "train/loss" not in s["mean"] and "best_checkpoint" not in s["mean"]
    oof = s["oof"]["segmentation"]["metrics"]
    assert oof["oof/val/dice_post"] == pytest.approx(np.mean([1.0, 0.0, 0.5, 0.5]))  # pooled cases, NaN left out
    assert oof["oof/val/dice_post/y"] == pytest.approx(0.5) and oof["oof/val/dice_post/x"] == pytest.approx(0.5)
    assert s["oof"]["segmentation"]["n_cases"] == 5
    json_path, csv_path = cv.write_summary(s, sweep)
    assert json_path.name == "cv_summary.json" and csv_path.name == "cv_summary.csv"
    assert [r["job"] for r in csv_rows(csv_path)] == ["0", "1", "2", "3", "mean", "std", "oof"]
    assert "RuntimeError" in cv.format_summary(s) or "FAILED folds: [2, 3]" in cv.format_summary(s)


def test_classification_oof_is_rescored_on_pooled_crops(tmp_path: Path) -> None:
    from wbc.evaluation.classification import classification_report

    sweep = tmp_path / "sweep"
    p0 = [("s1", "a", 0.9), ("s2", "b", 0.6)]
    p1 = [("s3", "b", 0.2), ("s4", "a", 0.4), ("s5", "a", 0.8)]
    fake_run(sweep, 0, 0, {"val/macro_f1": 0.5}, preds=p0)
    fake_run(sweep, 1, 1, {"val/macro_f1": 0.5}, preds=p1)
    s = cv.summarize_sweep(sweep)
    pooled = p0 + p1
    probs = np.asarray([[pa, 1 - pa] for _, _, pa in pooled], dtype=np.float32)
    labels = np.asarray([0 if t == "a" else 1 for _, t, _ in pooled])
    expected = classification_report(probs, labels, ["a", "b"], "oof/val")
    got = s["oof"]["classification"]
    assert got["n_crops"] == 5 and got["classes"] == ["a", "b"]
    for key in ("oof/val/macro_f1", "oof/val/balanced_accuracy", "oof/val/accuracy"):
        assert got["metrics"][key] == pytest.approx(expected[key]), key
    assert cv.write_oof_tables(cv.read_sweep(sweep), sweep)[0].name == "cv_oof_predictions.csv"


def test_pooled_oof_table_keeps_a_column_only_some_folds_wrote(tmp_path: Path) -> None:
    """A sweep resumed across versions: fold 0 written before the uncalibrated_p_ columns, fold 1 after.
    The pooled table keeps them (fold 0's cells empty) whichever fold comes first."""
    import csv

    from tests.helpers_data import add_uncalibrated_columns

    for first in (0, 1):
        sweep = tmp_path / f"sweep{first}"
        runs = [fake_run(sweep, j, j, {"val/macro_f1": 0.5}, preds=[(f"s{j}", "a", 0.9)]) for j in range(2)]
        add_uncalibrated_columns(runs[1 - first] / "val_predictions.csv", {"s0": 0.7, "s1": 0.7})
        table = cv.write_oof_tables(cv.read_sweep(sweep), sweep)[0]
        with table.open(newline="") as fh:
            rows = {r["sample_id"]: r for r in csv.DictReader(fh)}
        new, old = f"s{1 - first}", f"s{first}"
        assert rows[new]["uncalibrated_p_a"] == "0.7" and rows[old]["uncalibrated_p_a"] == "" and rows[old]["p_a"] == "0.9"


def test_settings_grouped_and_non_fold_sweeps_tabulated(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    for job, (lr, fold, v) in enumerate([(0.1, 0, 0.5), (0.1, 1, 0.7), (0.01, 0, 0.2), (0.01, 1, 0.4)]):
        fake_run(sweep, job, fold, {"val/dice": v}, overrides=[f"model.optimizer.lr={lr}", "resume=true"])
    s = cv.summarize_sweep(sweep)
    groups = {tuple(g["overrides"]): g for g in s["groups"]}
    assert groups[("model.optimizer.lr=0.1",)]["mean"]["val/dice"] == pytest.approx(0.6)
    assert groups[("model.optimizer.lr=0.01",)]["mean"]["val/dice"] == pytest.approx(0.3)
    assert len(csv_rows(cv.write_summary(s, sweep)[1])) == 2 * (2 + 2)
    trials = cv.summarize_jobs([cv.Job(str(i), tmp_path, "ok", overrides=[f"model.optimizer.lr={i}"], metrics={"val/dice": i / 10}) for i in range(3)])
    assert trials["kind"] == "sweep" and trials["n_ok"] == 3 and "groups" not in trials


def test_folds_on_other_software_are_named(tmp_path: Path) -> None:
    """A sweep resumed after an upgrade, or folds run on two machines: the summary names what
    differs and which jobs ran on what (job.json's `software`); jobs without a record do not count."""
    from wbc import provenance

    sweep = tmp_path / "sweep"
    mine = {**provenance.software_record(), "code": {"commit": "def", "modified": False}}
    other = {**mine, "packages": {**mine["packages"], "albumentations": "9.9.9"}, "code": {"commit": "abc", "modified": True}}
    for job, software in enumerate((mine, other, mine, None)):
        run = fake_run(sweep, job, job, {"val/dice": 0.5})
        rundir.start_job(run, resume.job_record(job, "segmentation", [f"data.fold={job}"], job, software=software))
    s = cv.summarize_sweep(sweep)
    diffs = s["software_differences"]
    assert f"package albumentations: {mine['packages']['albumentations']} (0, 2) vs 9.9.9 (1)" in diffs
    assert any(d.startswith("code: ") and "abc (1)" in d for d in diffs) and any(d.startswith("modified: ") for d in diffs)
    assert not any("torch" in d for d in diffs) and len(diffs) == 3
    assert "different software across folds: package albumentations" in cv.format_summary(s)
    (sweep / "1" / "job.json").unlink()  # the odd one out gone: the rest agree
    assert "software_differences" not in cv.summarize_sweep(sweep)


def test_software_record_names_the_commit_and_versions(tmp_path: Path) -> None:
    import platform
    import subprocess

    import torch

    from wbc import provenance

    rec = provenance.software_record()
    assert rec["python"] == platform.python_version() and rec["packages"]["torch"] == torch.__version__.split("+")[0]
    assert set(rec["packages"]) == set(provenance.PACKAGES)
    head = subprocess.run(["git", "-C", str(provenance.SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI, a fresh clone): the commit it runs
        assert rec["code"]["commit"] == head.stdout.strip() and isinstance(rec["code"]["modified"], bool)
    assert provenance.code_version(tmp_path) is None  # not a checkout: no commit, no error


def test_an_evaluation_kept_in_the_sweep_is_not_a_fold(tmp_path: Path) -> None:
    """evaluate.py's ensemble_test/ inside a sweep (benchmarks/quality.py) was averaged in as a fourth fold."""
    sweep = tmp_path / "sweep"
    for k, v in enumerate((0.80, 0.82, 0.84)):
        fake_run(sweep, k, k, {"test/dice_post": v})
    ens = fake_run(sweep, "ensemble_test", None, {"test/dice_post": 0.99})
    OmegaConf.save(OmegaConf.create({"task_name": "evaluate", "ckpt_path": str(sweep)}), ens / ".hydra" / "config.yaml")
    s = cv.summarize_sweep(sweep)
    assert s["folds"] == [0, 1, 2] and s["mean"]["test/dice_post"] == pytest.approx(0.82)


def test_mean_std_edge_cases() -> None:
    assert cv.mean_std([0.2, None, float("nan"), 0.4]) == {"mean": pytest.approx(0.3), "std": pytest.approx(math.sqrt(0.02)), "n": 2}
    assert cv.mean_std([0.2]) == {"mean": 0.2, "std": None, "n": 1}
    assert cv.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_failure_marker_and_finished_metrics(tmp_path: Path) -> None:
    try:
        raise ValueError("data.fold=7 is out of range")
    except ValueError as err:
        rundir.write_failure(tmp_path, err)
    assert (tmp_path / "FAILED").read_text().startswith("ValueError: data.fold=7 is out of range")
    (tmp_path / "metrics.json").write_text(json.dumps({"val/dice_best": 0.4}))
    assert rundir.finished_metrics(tmp_path) is None  # a FAILED marker wins
    rundir.start_job(tmp_path, resume.job_record(7, "segmentation", []))  # a new attempt forgets it
    assert rundir.finished_metrics(tmp_path) == {"val/dice_best": 0.4}
    assert rundir.returned_metric({"val/dice_best": 0.4}, "val/dice_best") == 0.4
    assert rundir.returned_metric({}, "val/dice_best") is None


def test_tensorboard_summary(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fake_run(sweep, 0, 0, {"val/dice": 0.5}, cases=[case("a", 1.0)])
    fake_run(sweep, 1, 1, {"val/dice": 0.7}, cases=[case("b", 0.0)])
    out = cv_dashboards.log_tensorboard_summary(cv.summarize_sweep(sweep), tmp_path / "tb")
    assert list(out.glob("events.out.tfevents.*"))


def test_wandb_summary_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short offline wandb run holding the CV table."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "sweep"
    fake_run(sweep, 0, 0, {"val/dice": 0.5})
    fake_run(sweep, 1, 1, {"val/dice": 0.7})
    run_dir = cv_dashboards.log_wandb_summary(cv.summarize_sweep(sweep), {"project": "wbc-test", "group": "g", "offline": True}, tmp_path)
    assert list(Path(run_dir).rglob("cv_summary*.table.json"))
