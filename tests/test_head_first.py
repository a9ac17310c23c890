"""callbacks.head_first (lightning_modules.callbacks.HeadFirst): the classifier's head trains alone for
the first epochs, its body frozen, then everything (LP-FT)."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from lightning_modules.callbacks import HeadFirst


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 2)

    def get_classifier(self) -> nn.Module:
        return self.fc


class BodySnapshots(L.Callback):
    """Copies of the classifier's body and head parameters before training and after every epoch."""

    def __init__(self) -> None:
        self.body: list[list[torch.Tensor]] = []
        self.head: list[list[torch.Tensor]] = []

    def _take(self, pl_module: L.LightningModule) -> None:
        body = {id(p) for p in HeadFirst.body(pl_module)}
        self.body.append([p.detach().clone() for p in pl_module.net.parameters() if id(p) in body])
        self.head.append([p.detach().clone() for p in pl_module.net.parameters() if id(p) not in body])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take(pl_module)


def test_body_is_frozen_for_the_head_epochs_then_trained() -> None:
    module = SimpleNamespace(net=Net())
    cb = HeadFirst(epochs=2)
    body = HeadFirst.body(module)
    assert len(body) == 4 and all(p is not module.net.fc.weight for p in body)  # conv w/b, BN w/b
    for epoch, frozen in ((0, True), (1, True), (2, False), (3, False)):
        cb.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
        assert all(p.requires_grad is not frozen for p in body) and module.net.fc.weight.requires_grad
    cb.on_train_epoch_start(SimpleNamespace(current_epoch=0), module)
    cb.on_train_end(SimpleNamespace(), module)
    assert all(p.requires_grad for p in module.net.parameters())


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"callbacks.head_first.epochs: expected >= 1"):
        HeadFirst(epochs=0)
    with pytest.raises(ValueError, match=r"callbacks.head_first: Sequential has no classification head"):
        HeadFirst.body(SimpleNamespace(net=nn.Sequential(nn.Linear(2, 2))))


def test_classifier_trains_its_head_alone_first(make_cfg, run_training, one_thread) -> None:
    cfg = make_cfg(["experiment=classify", "callbacks=[default,head_first]", "callbacks.head_first.epochs=1", "trainer.max_epochs=2",
                    "+callbacks.snapshots._target_=tests.test_head_first.BodySnapshots", "callbacks.early_stopping=null"])
    _, objects = run_training(cfg)
    # Hydra imports this file as tests.test_head_first, pytest under another name: match the class by name
    snap = next(cb for cb in objects["trainer"].callbacks if type(cb).__name__ == "BodySnapshots")
    assert len(snap.body) == 3  # before training, after epoch 0, after epoch 1
    assert all(torch.equal(a, b) for a, b in zip(snap.body[0], snap.body[1]))  # epoch 0: the body stays
    assert not all(torch.equal(a, b) for a, b in zip(snap.head[0], snap.head[1]))  # ... the head learns
    assert not all(torch.equal(a, b) for a, b in zip(snap.body[1], snap.body[2]))  # epoch 1: the body learns too
    assert all(p.requires_grad for p in objects["model"].parameters())
