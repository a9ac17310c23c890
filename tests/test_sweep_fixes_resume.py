"""Resuming runs stopped after their last epoch (while testing or scoring: last.ckpt, no metrics.json):
resume=true tests, validates and scores the best checkpoint as the uninterrupted run did; train=false
resume=true tests the run dir's own checkpoint, never freshly initialised weights; a re-launch without
resume=true refuses a run dir that holds results; a skipped finished job names overrides that changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_cv import TINY_CLI, run_cli
from tests.test_limits_and_paths import _cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _stopped_after_training(trained_run, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of a finished 1-epoch run (moved: its checkpoints record the old dir) without metrics.json."""
    run, metrics, _ = trained_run
    out = tmp_path / "run"
    for sub in ("checkpoints", "csv"):
        shutil.copytree(run / sub, out / sub)
    return out, metrics


def _same_figures(got: dict, want: dict) -> None:
    keys = [k for k, v in want.items() if isinstance(v, float) and k.startswith(("val/", "test/"))]
    assert keys and not [k for k in keys if k not in got]
    for k in keys:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


def test_resume_of_a_run_stopped_after_training_completes_it(trained_run, make_cfg, run_training, tmp_path: Path) -> None:
    out, want = _stopped_after_training(trained_run, tmp_path)
    metrics, _ = run_training(make_cfg(["resume=true"], output_dir=out))
    assert Path(metrics["best_checkpoint"]) == out / "checkpoints" / Path(want["best_checkpoint"]).name
    _same_figures(metrics, want)
    assert metrics["val/dice_best"] == pytest.approx(want["val/dice_best"])
    assert json.loads((out / "metrics.json").read_text())["test/dice_post"] == pytest.approx(want["test/dice_post"])
    epochs = [r for r in (out / "csv" / "metrics.csv").read_text().splitlines()[1:] if r.split(",")[0] == "0"]
    assert epochs, "the learning curve's epochs were lost"


def test_resume_without_the_recorded_best_checkpoint_says_so(trained_run, make_cfg, run_training, tmp_path: Path) -> None:
    out, want = _stopped_after_training(trained_run, tmp_path)
    (out / "checkpoints" / Path(want["best_checkpoint"]).name).unlink()
    with pytest.raises(FileNotFoundError, match=r"records the best checkpoint .*which is gone"):
        run_training(make_cfg(["resume=true"], output_dir=out))


def test_train_false_resume_tests_the_run_dirs_own_checkpoint(trained_run, make_cfg, run_training, tmp_path: Path) -> None:
    out, want = _stopped_after_training(trained_run, tmp_path)
    metrics, _ = run_training(make_cfg(["resume=true", "train=false"], output_dir=out))
    assert Path(metrics["best_checkpoint"]) == out / "checkpoints" / Path(want["best_checkpoint"]).name
    assert metrics["test/dice_post"] == pytest.approx(want["test/dice_post"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("resume", [True, False])
def test_train_false_without_a_checkpoint_is_refused(make_cfg, run_training, tmp_path: Path, resume: bool) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    where = rf"resume=true: {out} holds no checkpoint" if resume else "no ckpt_path was given"
    with pytest.raises(FileNotFoundError, match=rf"train=false tests a trained model, and {where}: pass ckpt_path="):
        run_training(make_cfg(["train=false", f"resume={str(resume).lower()}"], output_dir=out))
    assert not (out / "metrics.json").exists()


@pytest.mark.slow  # two CLI sweeps and two CLI refusals (~40 s)
def test_preempted_sweep_resumes_refuses_a_fresh_relaunch_and_names_changed_overrides(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    run_cli(["-m", *TINY_CLI, "data.fold=0,1", f"hydra.sweep.dir={sweep}"], data_dir)
    want = json.loads((sweep / "1" / "metrics.json").read_text())
    (sweep / "1" / "metrics.json").unlink()  # killed while testing / scoring
    (sweep / "cv_summary.json").unlink()
    run_cli(["-m", *TINY_CLI, "data.fold=0,1", f"hydra.sweep.dir={sweep}", "resume=true"], data_dir)
    assert not (sweep / "1" / "FAILED").exists()
    _same_figures(json.loads((sweep / "1" / "metrics.json").read_text()), want)
    s = json.loads((sweep / "cv_summary.json").read_text())
    assert s["n_ok"] == 2 and s["failed_folds"] == []
    # a re-launch without resume=true into the same sweep dir: refused, nothing overwritten or marked FAILED
    before = (sweep / "0" / "metrics.json").read_text()
    proc = _cli(["-m", *TINY_CLI, "data.fold=0,1", "model.optimizer.lr=0.003", f"hydra.sweep.dir={sweep}"], data_dir)
    assert proc.returncode != 0
    assert f"{sweep / '0'} already holds results of an earlier run" in proc.stderr and "resume=true" in proc.stderr
    assert (sweep / "0" / "metrics.json").read_text() == before and not (sweep / "0" / "FAILED").exists()
    # the same for a single run into a run dir that holds results
    proc = _cli([*TINY_CLI, f"hydra.run.dir={sweep / '0'}"], data_dir)
    assert proc.returncode != 0 and "new hydra.run.dir" in proc.stderr
    # a resume launch with another schedule: the finished folds are skipped, and it says which override differs
    proc = run_cli(["-m", *TINY_CLI, "data.fold=0,1", "trainer.max_epochs=3", f"hydra.sweep.dir={sweep}", "resume=true"], data_dir)
    assert "trainer.max_epochs: 1 -> 3" in proc.stdout + proc.stderr
    s = json.loads((sweep / "cv_summary.json").read_text())
    assert "trainer.max_epochs=1" in s["overrides"] and "trainer.max_epochs=3" not in json.dumps(s["per_fold"])
