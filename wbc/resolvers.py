"""OmegaConf resolvers used by `conf/` (registered once, on import of `wbc`)."""

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


def register_resolvers() -> None:
    for name, fn in {"wbc.channels": _channels, "wbc.outputs": _num_outputs, "wbc.len": len}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
