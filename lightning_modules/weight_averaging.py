"""Weight averaging for the classifier and segmenter: a weight EMA and stochastic weight averaging
(Lightning's WeightAveraging) that leave the classifier's calibration alone and swap the average in
for validation only while fitting."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_swa_avg_fn

log = logging.getLogger("wbc")


def fitting(trainer: L.Trainer) -> bool:
    """Whether the trainer is inside fit (its sanity check and per-epoch validation included)."""
    return trainer.state.fn == TrainerFn.FITTING


class _KeepsCalibration:
    """Mixin for Lightning's WeightAveraging callbacks: the average is validated, checkpointed and
    finally kept in place of the raw weights, except for the buffers the module fits on validation
    itself (`pl_module.unaveraged_buffers`: the classifier's temperature and review threshold).

    Those are fitted at each validation epoch's end on the averaged weights' probabilities, after
    the parent callback has swapped the raw weights back; averaged or swapped like weights they
    would end up as an average of past temperatures, not the one fitted for the saved weights.
    Here they stay on the module, and every checkpoint carries the module's values.

    The average is swapped in for validation while fitting only: after fit the callback stays on
    the trainer, and `trainer.validate(ckpt_path=best)` (wbc.fit.validate_tested) would otherwise
    validate the run's final average in place of the checkpoint's own (already averaged) weights.
    """

    _average_model: Any

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)  # type: ignore[misc]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)  # type: ignore[misc]

    @staticmethod
    def _pairs(pl_module: L.LightningModule, average: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(averaged, current) tensors by name, the module's unaveraged buffers left out."""
        skip = set(getattr(pl_module, "unaveraged_buffers", ()))
        mine = dict(itertools.chain(average.named_parameters(), average.named_buffers()))
        return [(mine[name], t) for name, t in itertools.chain(pl_module.named_parameters(), pl_module.named_buffers())
                if name not in skip and name in mine]

    def _swap_models(self, pl_module: L.LightningModule) -> None:
        assert self._average_model is not None
        for avg, cur in self._pairs(pl_module, self._average_model.module):
            tmp = avg.data.clone()
            avg.data.copy_(cur.data)
            cur.data.copy_(tmp)

    def _copy_average_to_current(self, pl_module: L.LightningModule) -> None:
        assert self._average_model is not None
        for avg, cur in self._pairs(pl_module, self._average_model.module):
            cur.data.copy_(avg.data)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)  # type: ignore[misc]
        for name in getattr(pl_module, "unaveraged_buffers", ()):
            checkpoint["state_dict"][name] = getattr(pl_module, name).detach().clone()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # only a resumed fit needs the raw weights back; testing or predicting from a checkpoint
        # (trainer.test(ckpt_path=...) after fit, with this callback still attached) keeps the
        # average that Lightning has already loaded from state_dict
        if fitting(trainer):
            super().on_load_checkpoint(trainer, pl_module, checkpoint)  # type: ignore[misc]


class CalibratedEMA(_KeepsCalibration, EMAWeightAveraging):
    """Exponential moving average of the weights (Lightning's EMAWeightAveraging), the classifier's
    calibration left as fitted on the average (`_KeepsCalibration`)."""

    def __init__(self, decay: float = 0.999, update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"callbacks.ema.decay: expected a number in (0, 1), got {decay}")
        super().__init__(decay=decay, update_starting_at_epoch=update_starting_at_epoch, **kwargs)


class CalibratedSWA(_KeepsCalibration, WeightAveraging):
    """Stochastic weight averaging (Izmailov et al. 2018): from epoch `epoch_start` on, the weights
    after every optimizer step are averaged with equal weights (batch-norm statistics too), at a
    constant learning rate `lr` (null: the configured schedule goes on, a plain tail average).

    Unlike an EMA from the first step, nothing is averaged, validated or saved as an average
    before the window opens: earlier epochs validate and checkpoint the raw weights, so a
    temperature fitted then belongs to those weights, and a run shorter than the window ends with
    its raw weights. `epoch_start` below 1 is a fraction of `trainer.max_epochs`.
    """

    def __init__(self, epoch_start: float = 0.75, lr: float | None = None, **kwargs: Any) -> None:
        if not (0 < epoch_start < 1 or (epoch_start >= 0 and epoch_start == int(epoch_start))):
            raise ValueError(f"callbacks.swa.epoch_start: expected an epoch (int >= 0) or a fraction in (0, 1) of max_epochs, got {epoch_start}")
        if lr is not None and not lr > 0:
            raise ValueError(f"callbacks.swa.lr: expected a learning rate > 0 or null, got {lr}")
        # the per-tensor equal average on every device: torch's grouped CUDA default (no avg_fn) fails on
        # batch norm's integer num_batches_tracked ("Integer division with addcdiv is no longer supported")
        super().__init__(avg_fn=get_swa_avg_fn(), **kwargs)
        self.epoch_start, self.lr = epoch_start, lr
        self._first_epoch = 0
        self._in_window = False
        self._swapped = False

    def _averaged(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = self.epoch_start
        if 0 < start < 1 and not (trainer.max_epochs or 0) > 0:
            raise ValueError(f"callbacks.swa.epoch_start: a fraction ({start}) needs trainer.max_epochs, got {trainer.max_epochs}")
        self._first_epoch = int(start * trainer.max_epochs) if 0 < start < 1 else int(start)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._in_window = trainer.current_epoch >= self._first_epoch
        if not self._in_window and self._averaged():  # a resume whose larger max_epochs moved the window on
            log.warning("callbacks.swa: the restored average (window from epoch %d) is dropped: the window now opens at "
                        "epoch %d (epoch_start=%s of trainer.max_epochs=%d)", trainer.current_epoch, self._first_epoch,
                        self.epoch_start, trainer.max_epochs)
            self._average_model.n_averaged.zero_()  # the next update starts a new average from the weights

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._in_window and self.lr is not None:  # every step: a step-wise scheduler would undo it
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and self._in_window

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swapped = self._averaged() and fitting(trainer)  # after fit: the checkpoint's weights as loaded
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaged():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._averaged():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
        # before the window: a plain checkpoint of the raw weights (a resume re-creates the empty average)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if "current_model_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # else saved before the window (raw weights, loaded already): the average starts empty
