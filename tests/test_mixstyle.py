"""MixStyle (lightning_modules.mixing.mix_styles, callbacks.mixstyle): early feature statistics blended
between crops while training, nothing changed outside training."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from lightning_modules.callbacks import MixStyle
from lightning_modules.mixing import mix_styles


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3), keepdim=True), (x.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt()


def features() -> torch.Tensor:
    torch.manual_seed(0)
    # four "labs": each sample its own channel offsets and spreads
    return torch.randn(4, 3, 8, 8) * torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1) + torch.arange(4.0).view(4, 1, 1, 1) * 3


def test_styles_are_blended_and_content_kept() -> None:
    x = features()
    torch.manual_seed(1)
    y = mix_styles(x, alpha=0.5)
    mu, sig = stats(x)
    mu_y, sig_y = stats(y)
    # the normalised map (the content) is the same; only the statistics moved
    torch.testing.assert_close((y - mu_y) / sig_y, (x - mu) / sig, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(mu_y, mu, atol=1e-2)
    # each new mean and spread is a blend of the batch's: inside their range
    assert (mu_y >= mu.min(0).values - 1e-4).all() and (mu_y <= mu.max(0).values + 1e-4).all()
    assert (sig_y >= sig.min(0).values - 1e-4).all() and (sig_y <= sig.max(0).values + 1e-4).all()


def test_style_carries_no_gradient_and_a_single_crop_is_left_alone() -> None:
    x = features().requires_grad_(True)
    w = torch.rand(4, 3, 8, 8) + 0.5
    torch.manual_seed(1)
    (mix_styles(x, alpha=0.5) * w).sum().backward()
    # detached statistics: the output is x times a constant per sample and channel, plus a constant, so
    # grad / w is that constant (a gradient through the mean or spread would add terms that vary with w)
    ratio = x.grad / w
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-4)
    one = features()[:1]
    assert mix_styles(one, alpha=0.5) is one


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def test_hooks_act_in_training_only_and_leave_with_training() -> None:
    module = SimpleNamespace(net=Net())
    x = features()
    with torch.no_grad():
        plain = module.net(x)
        cb = MixStyle(p=1.0, alpha=0.5, layers=["blocks.0"])
        cb.on_train_start(SimpleNamespace(), module)
        module.net.train()
        torch.manual_seed(1)
        assert not torch.allclose(module.net(x), plain)
        module.net.eval()
        assert torch.equal(module.net(x), plain)  # validation / testing: untouched
        module.net.train()
        cb.on_train_end(SimpleNamespace(), module)
        assert torch.equal(module.net(x), plain)  # hooks gone after training
        cb = MixStyle(p=0.0, layers=["blocks.0"])
        cb.on_train_start(SimpleNamespace(), module)
        assert torch.equal(module.net(x), plain)  # p = 0: never mixed
        cb.on_train_end(SimpleNamespace(), module)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"callbacks.mixstyle: expected p in \[0, 1\]"):
        MixStyle(p=1.5)
    with pytest.raises(ValueError, match=r"callbacks.mixstyle.layers: \['stage9'\] not found in Net"):
        MixStyle(layers=["stage9"]).on_train_start(SimpleNamespace(), SimpleNamespace(net=Net()))


class CountMixes(L.Callback):
    """How many training forward passes of `features.0` the MixStyle hook changed."""

    def __init__(self) -> None:
        self.changed = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def probe(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            # registered after MixStyle's hook, so it sees the mixed output; type(module).forward skips the hooks
            if module.training:
                with torch.no_grad():
                    self.changed += int(not torch.equal(output, type(module).forward(module, *inputs)))
        layer = dict(pl_module.net.named_modules())["features.0"]
        self.handle = layer.register_forward_hook(probe)


def test_classifier_trains_with_mixstyle_from_the_config(make_cfg, run_training, one_thread) -> None:
    cfg = make_cfg(["experiment=classify", "callbacks=[default,mixstyle]", "callbacks.mixstyle.layers=[features.0]",
                    "callbacks.mixstyle.p=1.0", "trainer.max_epochs=1", "+callbacks.count._target_=tests.test_mixstyle.CountMixes"])
    _, objects = run_training(cfg)
    count = next(cb for cb in objects["trainer"].callbacks if type(cb).__name__ == "CountMixes")
    assert count.changed > 0  # the configured layer's outputs were mixed while training
    layer = dict(objects["model"].net.named_modules())["features.0"]
    assert len(layer._forward_hooks) == 1  # MixStyle's own hook removed at the end (the probe's stays)
