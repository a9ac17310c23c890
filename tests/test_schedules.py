"""lightning_modules/schedules.py: warm-up then cosine; without warm-up it is CosineAnnealingLR."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.schedules import warmup_cosine


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[float]:
    out = []
    for _ in range(epochs):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


def test_without_warmup_it_is_cosine_annealing() -> None:
    ours = lrs(warmup_cosine(optimizer(), T_max=10, eta_min=1e-5), 12)
    ref = lrs(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer(), T_max=10, eta_min=1e-5), 11)
    assert ours[:11] == pytest.approx(ref, rel=1e-6)
    assert ours[11] == pytest.approx(1e-5)  # stays at the floor after T_max


def test_warmup_rises_linearly_then_decays() -> None:
    got = lrs(warmup_cosine(optimizer(), T_max=10, eta_min=0.0, warmup_epochs=3), 11)
    assert got[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in zip(got[3:], got[4:])) and got[10] == pytest.approx(0.0, abs=1e-12)


def test_warmup_longer_than_the_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup_epochs"):
        warmup_cosine(optimizer(), T_max=5, warmup_epochs=5)
