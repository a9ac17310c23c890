"""Fit -> test on the best checkpoint -> stage-specific scoring -> metrics.json, for one stage.

Used by train.py for `stage=segmentation|classification` and twice by the pipeline stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from wbc.io import write_json
from wbc.plots import plot_learning_curves
from wbc.run import instantiate_dict

log = logging.getLogger("wbc")


def build_datamodule(data_cfg: DictConfig) -> L.LightningDataModule:
    dm = instantiate(data_cfg, _convert_="partial")
    dm.prepare_data()
    dm.load_manifest()  # class list is needed to build the model
    return dm


def build_trainer(cfg: DictConfig, output_dir: Path, callbacks_cfg=None, logger_cfg=None) -> L.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("channels_last", None)
    trainer_cfg["default_root_dir"] = str(output_dir)
    callbacks = instantiate_dict(callbacks_cfg if callbacks_cfg is not None else cfg.get("callbacks"), "callbacks")
    loggers = instantiate_dict(logger_cfg if logger_cfg is not None else cfg.get("logger"), "logger")
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, int | float):
            out[k] = float(v)
    return out


def fit_stage(
    cfg: DictConfig,
    data_cfg: DictConfig,
    model_cfg: DictConfig,
    output_dir: Path,
    score: Callable[[L.LightningModule, L.LightningDataModule, Path], dict[str, float]] | None = None,
    callbacks_cfg=None,
    logger_cfg=None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Train one stage in output_dir and return (metrics, objects)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(data_cfg)
    model = instantiate(model_cfg, data_info=datamodule.data_info())
    trainer = build_trainer(cfg, output_dir, callbacks_cfg, logger_cfg)
    if cfg.trainer.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(scalar_metrics(trainer.callback_metrics))
    ckpt = None
    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "best_model_path", ""):
        ckpt = cb.best_model_path
    elif not cfg.get("train", True) and cfg.get("ckpt_path"):
        ckpt = str(cfg.ckpt_path)  # test-only run (train=false): test the given checkpoint, not fresh weights
    metrics["best_checkpoint"] = ckpt  # type: ignore[assignment]
    if cfg.get("test", True):
        if ckpt is None:
            log.warning("No best checkpoint (checkpointing off or fast_dev_run): testing the current weights")
        results = trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True) if ckpt else trainer.test(model=model, datamodule=datamodule)
        for r in results:
            metrics.update(scalar_metrics(r))
        if score is not None and not cfg.trainer.get("fast_dev_run"):
            model.eval()
            metrics.update(score(model, datamodule, output_dir))
    plot_learning_curves(output_dir / "csv" / "metrics.csv", output_dir / "learning_curves.png")
    write_json(output_dir / "metrics.json", metrics)
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}
