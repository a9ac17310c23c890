"""callbacks.swa (lightning_modules.callbacks.CalibratedSWA): nothing is averaged before the
window, the window's steps run at the SWA learning rate and end as their equal average, and the
classifier keeps the temperature fitted on that average."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks import CalibratedSWA
from tests.helpers_models import assert_saved_average_and_its_temperature


class Line(L.LightningModule):
    """One linear layer on fixed data, recording the weights after every step and at validation."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.after_step: list[tuple[int, torch.Tensor, float]] = []  # (epoch, weights, the step's lr)
        self._lr = 0.0
        self.validated: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self._lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        return nn.functional.mse_loss(self.lin(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.after_step.append((self.current_epoch, self.lin.weight.detach().clone(), self._lr))

    def validation_step(self, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.validated.append((self.current_epoch, self.lin.weight.detach().clone()))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _fit(tmp_path: Path, callback: CalibratedSWA, epochs: int = 4) -> tuple[Line, L.Trainer]:
    torch.manual_seed(0)
    model = Line()
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        enable_checkpointing=False)
    trainer.fit(model, _loader(), _loader())
    return model, trainer


def test_the_window_runs_at_the_swa_lr_and_ends_as_the_equal_average_of_its_steps(tmp_path: Path) -> None:
    model, _ = _fit(tmp_path, CalibratedSWA(epoch_start=0.5, lr=0.02), epochs=4)
    before = [(e, w, lr) for e, w, lr in model.after_step if e < 2]
    window = [(e, w, lr) for e, w, lr in model.after_step if e >= 2]
    assert len(window) == 6  # epochs 2 and 3, three steps each
    assert all(lr == pytest.approx(0.02) for _, _, lr in window)
    assert [lr for _, _, lr in before] == pytest.approx([0.1] * 3 + [0.05] * 3)  # the schedule, untouched
    mean = torch.stack([w for _, w, _ in window]).mean(0)
    assert torch.allclose(model.lin.weight.detach(), mean, atol=1e-6)
    # before the window validation saw the raw weights (the last step's), in it the average so far
    validated = dict(model.validated)
    assert torch.equal(validated[1], before[-1][1])
    assert torch.allclose(validated[3], mean, atol=1e-6)


def test_a_run_that_ends_before_the_window_keeps_its_raw_weights(tmp_path: Path) -> None:
    model, _ = _fit(tmp_path, CalibratedSWA(epoch_start=5, lr=0.02), epochs=2)
    assert torch.equal(model.lin.weight.detach(), model.after_step[-1][1])
    assert all(lr != 0.02 for _, _, lr in model.after_step)


@pytest.mark.parametrize("start", [-1, 1.5, 30.2])
def test_a_bad_epoch_start_names_the_key(start: float) -> None:
    with pytest.raises(ValueError, match="callbacks.swa.epoch_start"):
        CalibratedSWA(epoch_start=start)


def test_a_bad_lr_names_the_key() -> None:
    with pytest.raises(ValueError, match="callbacks.swa.lr"):
        CalibratedSWA(lr=0.0)


def test_classifier_trained_with_swa_saves_the_average_and_its_own_temperature(make_cfg, run_training, one_thread) -> None:
    cfg = make_cfg(["experiment=classify", "callbacks=[default,swa]", "callbacks.swa.epoch_start=1",
                    "callbacks.swa.lr=0.0005", "trainer.max_epochs=3", "eval_checkpoint=last"])
    _, objects = run_training(cfg)
    assert any(isinstance(cb, CalibratedSWA) for cb in objects["trainer"].callbacks)
    assert_saved_average_and_its_temperature(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", objects)


class WithBatchNorm(Line):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(1)  # an integer buffer (num_batches_tracked) in the average

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.norm(self.lin(x)), y)


def test_batch_norm_averages_where_torch_would_take_its_grouped_cuda_path(tmp_path: Path, monkeypatch) -> None:
    """On CUDA torch's default SWA average (no avg_fn) is a grouped addcdiv, which fails on batch norm's
    int64 counter at the window's second step; the CPU tests take the per-tensor path. Here the CPU is
    listed as foreach-capable, the branch a GPU takes."""
    import torch.optim.swa_utils as swa_utils

    monkeypatch.setattr(swa_utils, "_get_foreach_kernels_supported_devices", lambda: ["cpu", "cuda"])
    torch.manual_seed(0)
    trainer = L.Trainer(max_epochs=3, callbacks=[CalibratedSWA(epoch_start=1)], default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", enable_checkpointing=False)
    trainer.fit(WithBatchNorm(), _loader(), _loader())
    assert trainer.state.finished


def test_a_resume_that_moves_the_window_later_starts_a_new_average(tmp_path: Path) -> None:
    """epoch_start=0.5 of 4 epochs opens at epoch 2; resumed with max_epochs=12 it opens at 6: the average
    restored from epochs 2-3 must not be validated meanwhile nor end up in the final weights."""
    torch.manual_seed(0)
    first = L.Trainer(max_epochs=4, callbacks=[CalibratedSWA(epoch_start=0.5)], default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    first.fit(Line(), _loader(), _loader())
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    model = Line()
    second = L.Trainer(max_epochs=12, callbacks=[CalibratedSWA(epoch_start=0.5)], default_root_dir=tmp_path / "b", logger=False,
                       enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", enable_checkpointing=False)
    second.fit(model, _loader(), _loader(), ckpt_path=ckpt)
    window = [w for e, w, _ in model.after_step if e >= 6]
    assert len(window) == 18
    assert torch.allclose(model.lin.weight.detach(), torch.stack(window).mean(0), atol=1e-6)
    validated = dict(model.validated)
    assert torch.equal(validated[5], [w for e, w, _ in model.after_step if e == 5][-1])  # raw weights before the window
