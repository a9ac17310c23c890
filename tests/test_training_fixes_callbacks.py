"""Training fixes in the callbacks: validating a checkpoint after fit with EMA / SWA attached sees that
checkpoint's weights, AdaBN's test-time statistics do not outlive the test, and the body's batch norms
keep their statistics while head_first freezes it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks import AdaptBatchNorm, CalibratedEMA, CalibratedSWA, HeadFirst

QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
NO_FILES = {**QUIET, "enable_checkpointing": False}


class Line(L.LightningModule):
    """A linear regression that records the weights each validation saw."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen: torch.Tensor | None = None

    def training_step(self, batch, batch_idx):
        return ((self.lin(batch[0]) - batch[1]) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.seen = self.lin.weight.detach().clone()
        self.log("val/loss", ((self.lin(batch[0]) - batch[1]) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _regression() -> DataLoader:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    return DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [2.0], [3.0], [4.0]])), batch_size=8)


@pytest.mark.parametrize("make", [lambda: CalibratedEMA(decay=0.5), lambda: CalibratedSWA(epoch_start=0)], ids=["ema", "swa"])
def test_validating_a_checkpoint_after_fit_sees_its_own_weights(tmp_path: Path, make, one_thread) -> None:
    dl = _regression()
    trainer = L.Trainer(max_epochs=4, callbacks=[make(), ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")],
                        default_root_dir=tmp_path, **QUIET)
    model = Line()
    trainer.fit(model, dl, dl)
    during_fit = model.seen  # the last epoch validated the average (swapped in while fitting)
    final = model.lin.weight.detach().clone()
    assert torch.allclose(during_fit, final)  # ... which fit leaves in place of the raw weights
    path = tmp_path / "epoch=0.ckpt"  # an earlier "best" epoch, as wbc.fit.validate_tested validates
    saved = torch.load(path, weights_only=True)["state_dict"]["lin.weight"]
    trainer.validate(model, dl, ckpt_path=str(path), weights_only=True, verbose=False)
    assert torch.allclose(model.seen, saved) and not torch.allclose(saved, final)
    assert torch.allclose(model.lin.weight, saved)  # and nothing was swapped back in afterwards


class BatchNormNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.net(x)

    def test_step(self, batch, batch_idx):
        self.log("test/x", self(batch["image"]).mean())


class ImageSet(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


@pytest.mark.parametrize("entropy_epochs", [0, 1])
def test_adapt_bn_statistics_last_for_the_test_only(entropy_epochs: int, one_thread) -> None:
    torch.manual_seed(0)
    model = BatchNormNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: dict[str, torch.Tensor] = {}

    class Peek(L.Callback):  # after AdaptBatchNorm's on_test_start: the adapted statistics
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.setdefault("mean", pl_module.net[1].running_mean.clone())

    shifted = ImageSet(torch.rand(12, 3, 8, 8) * 3 + 5)  # another lab's "stain"
    adapt = AdaptBatchNorm(entropy_epochs=entropy_epochs)
    trainer = L.Trainer(callbacks=[adapt, Peek()], **NO_FILES)
    trainer.test(model, DataLoader(shifted, batch_size=4), verbose=False)
    assert not torch.allclose(seen["mean"], before["net.1.running_mean"])  # the test ran adapted ...
    assert torch.equal(model.net[1].running_mean, seen["mean"])  # ... and the test split's own scoring still sees it
    adapt.restore_after_test()  # wbc.fit, before the validation split is scored
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), [k for k, v in before.items() if not torch.equal(after[k], v)]


def test_out_of_fold_predictions_after_an_adapt_bn_test_are_the_checkpoints(make_cfg, run_training, one_thread) -> None:
    from lightning_modules.classification import ClassifierModule
    from lightning_modules.common import module_from_checkpoint
    from wbc.evaluation.classification import predict_crops, read_predictions_csv

    cfg = make_cfg(["experiment=classify", "callbacks=[default,adapt_bn]", "trainer.max_epochs=1", "num_overlays=0"])
    metrics, objects = run_training(cfg)
    out = Path(cfg.paths.output_dir)
    model = module_from_checkpoint(ClassifierModule, json.loads((out / "metrics.json").read_text())["best_checkpoint"], "classification")
    mine = predict_crops(model, objects["datamodule"].datasets["val"])
    classes, rows = read_predictions_csv(out / "val_predictions.csv")
    written = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    assert np.abs(mine - written).max() < 1e-4


class HeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = HeadNet()
        self.stats: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def on_train_epoch_end(self) -> None:
        self.stats.append(self.net.features[1].running_mean.clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_head_first_keeps_the_frozen_bodys_batch_norm_statistics(tmp_path: Path, one_thread) -> None:
    torch.manual_seed(0)
    x, y = torch.rand(32, 3, 8, 8) * 4 + 2, torch.randint(0, 2, (32,))
    dl = DataLoader(TensorDataset(x, y), batch_size=8)
    model = Classifier()
    before = model.net.features[1].running_mean.clone()
    head = model.net.fc.weight.detach().clone()
    L.Trainer(max_epochs=3, callbacks=[HeadFirst(epochs=2)], default_root_dir=tmp_path, **NO_FILES).fit(model, dl, dl)
    assert torch.equal(model.stats[0], before) and torch.equal(model.stats[1], before)  # head-only epochs (validation between)
    assert not torch.equal(model.stats[2], before)  # the whole network trains from epoch 2: statistics move again
    assert not torch.equal(model.net.fc.weight, head)
    assert model.net.features[1].training  # the module leaves fit in train mode, as it came
