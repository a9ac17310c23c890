"""OmegaConf resolvers used by `conf/` (`${wbc.channels:...}` and co.). Importing this module registers
nothing: `wbc.cli.prepare()` calls `register_resolvers()` before any command composes its config (tests do
the same in conftest.py); a second call is a no-op."""

from __future__ import annotations

from omegaconf import OmegaConf


def _channels(grayscale: bool) -> int:
    """Network input channels follow the preprocessing: 1 after grayscale, else 3 (RGB)."""
    return 1 if bool(grayscale) else 3


def _num_outputs(target: str) -> int:
    """Segmentation output channels: 1 logit for binary nucleus, 3 for bg/cytoplasm/nucleus."""
    if target == "nucleus":
        return 1
    if target == "multiclass":
        return 3
    raise ValueError(f"data.target must be 'nucleus' or 'multiclass', got {target!r}")


def _sweep_group(base: str) -> str:
    """Dashboard group of a run (logger/wandb.yaml): `base` for a single run, `base-<sweep dir name>`
    for every job of a multirun, so the folds of one sweep land in one group."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN and hc.sweep.dir:
            return f"{base}-{Path(str(hc.sweep.dir)).name}"
    return str(base)


def _rank_suffix() -> str:
    """'' on rank zero, '.rank<k>' on another DDP rank: each process its own job log (hydra/default.yaml)."""
    from wbc.rundir import RANK_VARIABLES, is_rank_zero

    if is_rank_zero():
        return ""
    import os

    rank = next((os.environ[v] for v in RANK_VARIABLES if str(os.environ.get(v, "0")).strip() not in ("", "0")), "x")
    return f".rank{rank}"


def register_resolvers() -> None:
    resolvers = {"wbc.channels": _channels, "wbc.outputs": _num_outputs, "wbc.len": len, "wbc.sweep_group": _sweep_group, "wbc.rank_suffix": _rank_suffix}
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
