"""callbacks.ema (lightning_modules.callbacks.CalibratedEMA): the saved and final weights are the
average, while the classifier's temperature and review threshold stay the ones fitted on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_modules.callbacks import CalibratedEMA
from tests.helpers_models import assert_saved_average_and_its_temperature


class Tiny(nn.Module):
    unaveraged_buffers = ("temperature",)

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("running", torch.zeros(2))


def test_swap_and_copy_leave_the_unaveraged_buffers_on_the_module() -> None:
    cur, avg = Tiny(), Tiny()
    with torch.no_grad():
        avg.lin.weight.fill_(3.0)
        avg.running.fill_(5.0)
        avg.temperature.fill_(9.0)
    cur.temperature.fill_(2.0)
    before = cur.lin.weight.clone()
    pairs = CalibratedEMA._pairs(cur, avg)
    assert len(pairs) == 3  # weight, bias, running: not temperature
    cb = CalibratedEMA(decay=0.5)
    cb._average_model = type("A", (), {"module": avg})()
    cb._swap_models(cur)
    assert torch.all(cur.lin.weight == 3.0) and torch.all(cur.running == 5.0) and torch.equal(avg.lin.weight, before)
    assert cur.temperature.item() == 2.0 and avg.temperature.item() == 9.0
    cb._copy_average_to_current(cur)
    assert torch.equal(cur.lin.weight, before) and cur.temperature.item() == 2.0


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_a_decay_outside_0_1_names_the_key(decay: float) -> None:
    with pytest.raises(ValueError, match="callbacks.ema.decay"):
        CalibratedEMA(decay=decay)


@pytest.mark.parametrize("which", ["last", "best"])
def test_classifier_trained_with_ema_saves_the_average_and_its_own_temperature(make_cfg, run_training, one_thread, which) -> None:
    cfg = make_cfg(["experiment=classify", "callbacks=[default,ema]", "callbacks.ema.decay=0.5", "trainer.max_epochs=2",
                    f"eval_checkpoint={which}", "callbacks.model_checkpoint.monitor=null"])  # "best": the latest epoch_*.ckpt
    metrics, objects = run_training(cfg)
    assert any(isinstance(cb, CalibratedEMA) for cb in objects["trainer"].callbacks)
    tested = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt" if which == "last" else Path(metrics["best_checkpoint"])
    assert_saved_average_and_its_temperature(tested, objects)
