"""Pieces both LightningModules share: config-built parts, optimizer wiring, safe loading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(cfg: Any) -> Any:
    """DictConfig -> plain dict (resolved), so checkpoints hold only primitives (weights-only loadable)."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build(cfg: Mapping | None, **kwargs: Any) -> Any:
    """Instantiate a `_target_` mapping (None stays None)."""
    return None if cfg is None else instantiate(dict(cfg), **kwargs)


def configure_optimizers(module: L.LightningModule) -> dict:
    """Optimizer and scheduler come from `_partial_` configs in hparams (LHT convention)."""
    hp = module.hparams
    optimizer = build(hp.optimizer)(params=[p for p in module.parameters() if p.requires_grad])
    if not hp.get("scheduler"):
        return {"optimizer": optimizer}
    scheduler = build(hp.scheduler)(optimizer=optimizer)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": hp.get("scheduler_interval", "epoch"), "monitor": hp.get("scheduler_monitor")},
    }


def load_checkpoint(path: str, expected_stage: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint weights-only (no arbitrary unpickling) and check it is the right stage."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: file not found")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - turn any unpickling/zip error into one clear message
        raise ValueError(f"ckpt_path={path}: not a loadable Lightning checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"ckpt_path={path}: not a Lightning checkpoint of this project (no state_dict/hyper_parameters)")
    stage = ckpt["hyper_parameters"].get("stage")
    if stage != expected_stage:
        raise ValueError(f"ckpt_path={path}: is a {stage!r} checkpoint, expected a {expected_stage!r} one")
    return ckpt


def module_from_checkpoint(cls: type[L.LightningModule], path: str, stage: str, map_location: str = "cpu") -> L.LightningModule:
    ckpt = load_checkpoint(path, stage, map_location)
    module = cls(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return module
