"""Learning-rate schedules the configs can name beside torch's own (`model.scheduler._target_`)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, T_max: int, eta_min: float = 0.0, warmup_epochs: int = 0) -> torch.optim.lr_scheduler.LambdaLR:  # noqa: N803 - CosineAnnealingLR's names
    """Linear warm-up over `warmup_epochs`, then cosine decay to `eta_min` at `T_max`: a pretrained
    backbone's first steps with a fresh head and large gradients do not wreck its features.
    With `warmup_epochs: 0` it equals CosineAnnealingLR, so it drops in for that config."""
    if warmup_epochs < 0 or warmup_epochs >= max(T_max, 1):
        raise ValueError(f"model.scheduler.warmup_epochs must be in [0, T_max={T_max}), got {warmup_epochs}")
    base = [g["lr"] for g in optimizer.param_groups]

    def factor(group: int):
        floor = eta_min / base[group] if base[group] > 0 else 0.0

        def at(epoch: int) -> float:
            if epoch < warmup_epochs:
                return (epoch + 1) / (warmup_epochs + 1)
            t = min(epoch - warmup_epochs, T_max - warmup_epochs) / max(1, T_max - warmup_epochs)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return at

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(i) for i in range(len(base))])
