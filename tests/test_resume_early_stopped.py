"""A run early stopping had stopped, then preempted while testing (last.ckpt, no metrics.json): resume=true
tests the checkpoint the uninterrupted run tested, as for a run stopped after its last scheduled epoch,
instead of training on (Lightning keeps trainer.should_stop out of the checkpoint; the callback's state
in last.ckpt says it had stopped)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from wbc.resume import early_stopped, fit_ended

pytestmark = pytest.mark.usefixtures("one_thread")

ES = {"early_stopping": {"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "val/dice"}}
KEY = "EarlyStopping{'monitor': 'val/dice', 'mode': 'max'}"


def _ckpt(tmp_path: Path, epochs: int, es: dict | None) -> Path:
    state = {"global_step": 2 * epochs, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": epochs}}}},
             "callbacks": {KEY: es} if es is not None else {}}
    path = tmp_path / "last.ckpt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("es", "stopped"), [
    ({"wait_count": 3, "stopped_epoch": 4, "patience": 3, "stopping_reason": 3, "stopping_reason_message": "no gain"}, True),
    ({"wait_count": 1, "stopped_epoch": 0, "patience": 3, "stopping_reason": 0}, False),
    ({"wait_count": 0, "stopped_epoch": 0, "patience": 3, "stopping_reason": 2}, True),  # divergence at epoch 0
    ({"wait_count": 3, "stopped_epoch": 4, "patience": 3}, True),  # Lightning 2.5: no stopping_reason
    ({"wait_count": 1, "stopped_epoch": 0, "patience": 3}, False),
    (None, False),
])
def test_early_stopping_state_decides_whether_fit_had_ended(tmp_path: Path, es: dict | None, stopped: bool) -> None:
    ckpt = _ckpt(tmp_path, 5, es)
    assert (early_stopped(ckpt, {"max_epochs": 30}, ES) is not None) is stopped
    assert (fit_ended(ckpt, {"max_epochs": 30}, ES) is not None) is stopped


def test_a_stop_before_min_epochs_or_without_early_stopping_now_trains_on(tmp_path: Path) -> None:
    ckpt = _ckpt(tmp_path, 5, {"wait_count": 3, "stopped_epoch": 4, "patience": 3, "stopping_reason": 3})
    assert early_stopped(ckpt, {"max_epochs": 30, "min_epochs": 8}, ES) is None  # Lightning trains on to min_epochs
    assert early_stopped(ckpt, {"max_epochs": 30}, {"early_stopping": None}) is None  # callbacks.early_stopping=null
    assert fit_ended(ckpt, {"max_epochs": 5}, {}) is not None  # the schedule alone still ends it


def test_resume_of_an_early_stopped_run_preempted_while_testing_tests_without_training(make_cfg, run_training, tmp_path: Path) -> None:
    # stopped by early stopping after its first of 3 epochs (any dice is below divergence_threshold=2)
    overrides = ["trainer.max_epochs=3", "++callbacks.early_stopping.divergence_threshold=2.0"]
    full = tmp_path / "full"
    want, _ = run_training(make_cfg(overrides, output_dir=full))
    out = tmp_path / "run"  # the same run, preempted while testing: last.ckpt and its CSV, no metrics.json
    for sub in ("checkpoints", "csv"):
        shutil.copytree(full / sub, out / sub)
    metrics, objects = run_training(make_cfg([*overrides, "resume=true"], output_dir=out))
    epochs = {r.split(",")[0] for r in (out / "csv" / "metrics.csv").read_text().splitlines()[1:]}
    assert "1" not in epochs, "the resumed run trained another epoch"
    assert Path(metrics["best_checkpoint"]) == out / "checkpoints" / Path(want["best_checkpoint"]).name
    for k in ("test/dice_post", "val/dice"):
        assert metrics[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    assert json.loads((out / "metrics.json").read_text())["test/dice_post"] == pytest.approx(want["test/dice_post"])
