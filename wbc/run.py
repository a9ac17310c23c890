"""Run utilities shared by the entry points (LHT's `utils`): instantiation, config tree, task wrapper."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("wbc")


def instantiate_dict(cfg: Mapping | None, kind: str) -> list[Any]:
    """Instantiate a dict of named `_target_` entries (callbacks, loggers); None entries are skipped."""
    out: list[Any] = []
    if not cfg:
        return out
    if not isinstance(cfg, Mapping | DictConfig):
        raise TypeError(f"{kind} config must be a dict of named entries, got {type(cfg).__name__}")
    for name, entry in cfg.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping | DictConfig) or "_target_" not in entry:
            raise ValueError(f"{kind}.{name}: expected a mapping with a _target_, got {entry!r}")
        log.info("Instantiating %s <%s>", kind, entry["_target_"])
        out.append(instantiate(entry))
    return out


def print_config_tree(cfg: DictConfig, save_to: Path | None = None, order: tuple[str, ...] = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")) -> None:
    """Rich tree of the resolved config, saved as config_tree.log in the run dir."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="dim", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as fh:
            rich.print(tree, file=fh)


def extras(cfg: DictConfig) -> None:
    """Optional utilities before the task starts (config printing, warnings)."""
    ex = cfg.get("extras") or {}
    if ex.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if ex.get("print_config"):
        from wbc.rundir import is_rank_zero

        # a DDP job's other ranks run in the same run dir: one tree, printed and saved once
        if is_rank_zero():
            print_config_tree(cfg, Path(cfg.paths.output_dir) / "config_tree.log")


def task_wrapper(task: Callable[[DictConfig], tuple[dict, dict]]) -> Callable[[DictConfig], tuple[dict, dict]]:
    """Log the exception to the run's log file (so a multirun keeps going with a record), and
    always close wandb so a crashed job does not hang the next one."""

    @functools.wraps(task)
    def wrap(cfg: DictConfig) -> tuple[dict, dict]:
        try:
            return task(cfg)
        except Exception:
            log.exception("Task failed; output dir: %s", cfg.paths.get("output_dir"))
            raise
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
            except ImportError:
                pass

    return wrap


def metric_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; available: {sorted(metrics)}")
    value = metrics[name]
    return float(value.item() if hasattr(value, "item") else value)
