"""MixStyle (lightning_modules.mixing.mix_styles, callbacks.mixstyle): early feature statistics blended
between crops while training, nothing changed outside training."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from lightning_modules.callbacks import MixStyle, RandomConvolution
from lightning_modules.mixing import mix_styles, random_convolution


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


def two_halves() -> torch.Tensor:
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, :, 8:] = torch.tensor([0.8, 0.3, 0.5]).view(1, 3, 1, 1)
    x[:, :, :, :8] = torch.tensor([0.2, 0.6, 0.4]).view(1, 3, 1, 1)
    return x


def test_random_convolution_changes_colour_and_keeps_shapes() -> None:
    x = two_halves()
    torch.manual_seed(0)
    y = random_convolution(x, kernel_sizes=(1,))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x, atol=1e-3)  # new colours ...
    # ... but a 1 px kernel is a per-pixel colour mix: each half stays one flat colour
    for half in (y[..., :8], y[..., 8:]):
        assert torch.allclose(half, half[..., :1, :1].expand_as(half), atol=1e-5)
    torch.manual_seed(0)
    z = random_convolution(x, kernel_sizes=(5,))
    assert z.shape == x.shape and not torch.allclose(z[..., 6:10], z[..., 6:7].expand_as(z[..., 6:10]))  # texture at the edge


def test_randconv_callback_replaces_the_training_batch_and_checks_its_settings() -> None:
    batch = {"image": two_halves(), "label": torch.tensor([0, 1])}
    before = batch["image"]
    RandomConvolution(p=1.0, kernel_sizes=[3]).on_train_batch_start(SimpleNamespace(), SimpleNamespace(), batch, 0)
    assert batch["image"].shape == before.shape and not torch.allclose(batch["image"], before)
    batch = {"image": before}
    RandomConvolution(p=0.0).on_train_batch_start(SimpleNamespace(), SimpleNamespace(), batch, 0)
    assert batch["image"] is before
    with pytest.raises(ValueError, match=r"callbacks.randconv: expected p in \[0, 1\] and odd kernel_sizes"):
        RandomConvolution(kernel_sizes=[2])


class TrainingInputs(L.Callback):
    """The training batches as the loader gives them (this callback runs before RandConv's), and the
    network's training inputs."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def record(module: nn.Module, args: tuple) -> None:
            if module.training:
                self.inputs.append(args[0].detach().clone())
        self.handle = pl_module.net.register_forward_pre_hook(record)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, batch_idx: int) -> None:
        self.batches.append(batch["image"].detach().clone())


@pytest.mark.parametrize("p", [1.0, 0.0])
def test_classifier_trains_on_randconv_crops_from_the_config(make_cfg, run_training, one_thread, p: float) -> None:
    # the probe first, RandConv after it: the probe sees the loader's batch, the network what RandConv made of it
    cfg = make_cfg(["experiment=classify", "+callbacks.inputs._target_=tests.test_mixstyle.TrainingInputs",
                    f"+callbacks.randconv={{_target_:lightning_modules.callbacks.RandomConvolution,p:{p}}}", "trainer.max_epochs=1"])
    assert list(cfg.callbacks)[-2:] == ["inputs", "randconv"]
    _, objects = run_training(cfg)
    probe = next(cb for cb in objects["trainer"].callbacks if type(cb).__name__ == "TrainingInputs")
    assert probe.batches and len(probe.inputs) == len(probe.batches)
    same = [torch.equal(a, b) for a, b in zip(probe.inputs, probe.batches)]
    assert not any(same) if p else all(same)


def test_callback_configs_build(make_cfg) -> None:
    from hydra.utils import instantiate

    cfg = make_cfg(["callbacks=[default,mixstyle,randconv]"])
    assert isinstance(instantiate(cfg.callbacks.mixstyle), MixStyle) and isinstance(instantiate(cfg.callbacks.randconv), RandomConvolution)
