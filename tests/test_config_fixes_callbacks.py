"""The default callback set takes each entry's settings from that entry's own file (editing
conf/callbacks/early_stopping.yaml changes the default set), and `logger=none` trains with it (the
learning-rate monitor, which needs a logger, left out)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR

DEFAULT_SET = ("model_checkpoint", "last_checkpoint", "early_stopping", "rich_progress_bar", "lr_monitor", "overlays", "epoch_seed")


def callbacks_node(conf_dir: Path, *overrides: str) -> dict:
    """The unresolved callbacks node of train.yaml composed from `conf_dir`."""
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("train.yaml", overrides=list(overrides))
    return OmegaConf.to_container(cfg.callbacks, resolve=False)


@pytest.mark.parametrize("name", DEFAULT_SET)
def test_default_set_is_each_entry_file_unchanged(name: str) -> None:
    # before: default.yaml restated model_checkpoint (save_last, filename, ...), last_checkpoint and early_stopping
    assert callbacks_node(CONF_DIR, "callbacks=default")[name] == callbacks_node(CONF_DIR, f"callbacks={name}")[name]


def test_editing_an_entry_file_reaches_the_default_set(tmp_path: Path) -> None:
    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    path = conf / "callbacks" / "early_stopping.yaml"
    path.write_text(path.read_text().replace("patience: 8", "patience: 3"))
    path = conf / "callbacks" / "model_checkpoint.yaml"
    path.write_text(path.read_text().replace("filename: epoch_{epoch:03d}", "filename: best_{epoch:03d}"))
    node = callbacks_node(conf, "callbacks=default")
    assert node["early_stopping"]["patience"] == 3
    assert node["model_checkpoint"]["filename"] == "best_{epoch:03d}"


def test_today_s_effective_defaults_are_kept() -> None:
    node = callbacks_node(CONF_DIR)
    ckpt, last, stop = node["model_checkpoint"], node["last_checkpoint"], node["early_stopping"]
    assert (ckpt["dirpath"], ckpt["filename"], ckpt["monitor"], ckpt["mode"], ckpt["save_last"], ckpt["auto_insert_metric_name"]) == (
        "${paths.output_dir}/checkpoints", "epoch_{epoch:03d}", "${monitor}", "max", False, False)
    assert (last["dirpath"], last["filename"], last["monitor"]) == ("${paths.output_dir}/checkpoints", "last", None)
    assert (stop["monitor"], stop["patience"], stop["mode"]) == ("${monitor}", 8, "max")
    assert callbacks_node(CONF_DIR, "experiment=classify")["early_stopping"]["patience"] == 15  # the stage's own


def test_no_logger_leaves_the_lr_monitor_out(make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from wbc.fit import build_trainer

    cfg = make_cfg(["logger=none"])
    assert not cfg.logger and cfg.callbacks.lr_monitor is not None
    with caplog.at_level(logging.INFO, logger="wbc"):
        trainer = build_trainer(cfg, tmp_path)
    assert not any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks)
    assert "lr_monitor" in caplog.text
    trainer = build_trainer(make_cfg(), tmp_path)  # with a logger it stays
    assert any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks)


def test_no_logger_trains_with_the_default_callbacks(make_cfg, run_training, one_thread) -> None:
    # before: MisconfigurationException "Cannot use LearningRateMonitor callback with Trainer that has no logger"
    cfg = make_cfg(["experiment=classify", "logger=none", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
                    "+trainer.limit_test_batches=1", "score_val=false", "num_overlays=0"])
    metrics, objects = run_training(cfg)
    assert objects["trainer"].logger is None and "test/macro_f1" in metrics
