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


def resume_from(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint trainer.fit continues from: `ckpt_path` if given, else with `resume=true`
    the run dir's own checkpoints/last.ckpt (an interrupted fold of a resumed sweep)."""
    if cfg.get("ckpt_path") or not cfg.get("resume") or not cfg.get("train", True):
        return cfg.get("ckpt_path")
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resume=true: %s continues from %s", output_dir, last)
        csv_log = output_dir / "csv" / "metrics.csv"
        if csv_log.is_file():  # the CSV logger starts a new file in the same dir: keep the old epochs
            csv_log.replace(csv_log.with_name(BEFORE_RESUME))
        return str(last)
    return None


BEFORE_RESUME = "metrics_before_resume.csv"


def merge_resumed_csv(csv_dir: Path) -> None:
    """csv/metrics.csv of a resumed run = the epochs logged before the interruption (up to the
    checkpoint it resumed from) + those logged after, so learning curves stay whole."""
    import csv

    old_path, new_path = csv_dir / BEFORE_RESUME, csv_dir / "metrics.csv"
    if not old_path.is_file() or not new_path.is_file():
        return
    with open(old_path, newline="") as fh:
        old = list(csv.DictReader(fh))
    with open(new_path, newline="") as fh:
        reader = csv.DictReader(fh)
        new, new_keys = list(reader), list(reader.fieldnames or [])
    first_epoch = min((int(float(r["epoch"])) for r in new if r.get("epoch")), default=None)
    first_step = min((int(float(r["step"])) for r in new if r.get("step")), default=None)

    def before(r: dict) -> bool:
        if r.get("epoch"):
            return first_epoch is None or int(float(r["epoch"])) < first_epoch
        return bool(r.get("step")) and (first_step is None or int(float(r["step"])) < first_step)

    kept = [r for r in old if before(r)]
    keys = list(dict.fromkeys([*new_keys, *(k for r in kept for k in r)]))
    from wbc.io import atomic_write

    def _write(p: Path) -> None:
        with open(p, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows([*kept, *new])

    atomic_write(new_path, _write)
    old_path.unlink()


def load_finished_stage(data_cfg: DictConfig, model_cfg: DictConfig, output_dir: Path) -> tuple[dict, dict] | None:
    """resume=true and this stage's dir already holds metrics.json (a pipeline run interrupted after
    it): reload its best checkpoint instead of training again. None when it cannot be reloaded."""
    import json

    from hydra.utils import get_class

    from lightning_modules.common import module_from_checkpoint
    from wbc.checkpoints import resolve_checkpoint

    try:
        metrics = json.loads((output_dir / "metrics.json").read_text())
        stage = str(model_cfg.get("stage"))
        ckpt = resolve_checkpoint(output_dir, stage)
        model = module_from_checkpoint(get_class(model_cfg._target_), str(ckpt), stage)
    except (OSError, ValueError) as err:
        log.warning("resume=true: cannot reuse the finished stage in %s (%s): training it again", output_dir, err)
        return None
    log.info("resume=true: %s already finished: reloaded %s", output_dir, ckpt)
    return metrics, {"datamodule": build_datamodule(data_cfg), "model": model, "trainer": None}


def latest_checkpoint(trainer: L.Trainer) -> str | None:
    """The checkpoint of the final epoch: a monitor-less ModelCheckpoint's file (callbacks.last_checkpoint),
    else a monitoring one's last_model_path."""
    callbacks = trainer.checkpoint_callbacks
    for cb in callbacks:
        if getattr(cb, "monitor", None) is None and getattr(cb, "best_model_path", ""):
            return cb.best_model_path
    return next((cb.last_model_path for cb in callbacks if getattr(cb, "last_model_path", "")), None)


def score_validation(cfg: DictConfig, model: L.LightningModule, datamodule: L.LightningDataModule, output_dir: Path) -> dict[str, float]:
    """Score the validation split with the tested weights (eval_checkpoint) and keep the per-case results:
    segmentation -> val_eval/summary.json (per-image Dice/IoU at original resolution), classification
    -> val_predictions.csv (per-crop probabilities). In a k-fold sweep these are the fold's
    out-of-fold predictions, pooled and re-scored by the CV summary (wbc.cv). The best epoch was
    chosen on this split when eval_checkpoint=best, so the figures are then slightly optimistic (as any
    early-stopped OOF score); eval_checkpoint=last avoids that."""
    val = getattr(datamodule, "datasets", {}).get("val")
    if val is None or len(val) == 0:
        return {}
    stage = model.hparams.get("stage")
    if stage == "segmentation":
        from wbc.seg_eval import evaluate_segmentation, headline

        summary = evaluate_segmentation(model, datamodule, "val", cfg.get("postprocess"), output_dir / "val_eval", num_overlays=0)
        return headline(summary, "val")
    if stage == "classification":
        from wbc.cls_eval import predict_crops, write_predictions

        probs = predict_crops(model, val)
        write_predictions(output_dir / "val_predictions.csv", val, probs, model.classes)
        return {"val/n_crops": float(len(val))}
    return {}


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
    if cfg.get("resume") and (output_dir / "metrics.json").is_file():
        finished = load_finished_stage(data_cfg, model_cfg, output_dir)
        if finished is not None:
            return finished
    resume_ckpt = resume_from(cfg, output_dir)  # before the loggers start (the CSV logger clears its file)
    datamodule = build_datamodule(data_cfg)
    model = instantiate(model_cfg, data_info=datamodule.data_info())
    if resume_ckpt:  # one clear error (missing, not a checkpoint, other stage) before Lightning's deep ones
        from lightning_modules.common import check_resume_checkpoint, load_checkpoint

        if cfg.get("train", True):
            check_resume_checkpoint(resume_ckpt, model.hparams.stage)
        else:
            load_checkpoint(resume_ckpt, model.hparams.stage)
    if cfg.get("eval_checkpoint", "best") not in ("best", "last"):
        raise ValueError(f"eval_checkpoint={cfg.get('eval_checkpoint')!r}: expected 'best' or 'last'")
    trainer = build_trainer(cfg, output_dir, callbacks_cfg, logger_cfg)
    if cfg.trainer.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=resume_ckpt)
        metrics.update(scalar_metrics(trainer.callback_metrics))
    ckpt = None
    cb = trainer.checkpoint_callback
    last = latest_checkpoint(trainer) if cfg.get("eval_checkpoint", "best") == "last" else None
    if last:
        ckpt = last
    elif cb is not None and getattr(cb, "best_model_path", ""):
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
            if cfg.get("score_val", True):
                metrics.update(score_validation(cfg, model, datamodule, output_dir))
    merge_resumed_csv(output_dir / "csv")
    plot_learning_curves(output_dir / "csv" / "metrics.csv", output_dir / "learning_curves.png")
    write_json(output_dir / "metrics.json", metrics)
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}
