"""Training callbacks: prediction overlays for image-capable loggers, per-epoch reseeding for exact
resumes, a weight EMA and stochastic weight averaging that leave the classifier's calibration
alone (lightning_modules.weight_averaging, re-exported here for the configs' targets), the
classifier's head trained before its pretrained body (LP-FT), MixStyle on early feature maps,
RandConv on training crops, and batch-norm statistics re-estimated on a held-out lab's test images."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_modules.mixing import mix_styles, random_convolution
from lightning_modules.weight_averaging import CalibratedEMA, CalibratedSWA
from wbc.adaptation import adapt_batchnorm, batchnorm_layers, minimise_entropy
from wbc.overlay import draw_overlay

__all__ = ["AdaptBatchNorm", "CalibratedEMA", "CalibratedSWA", "EpochSeed", "HeadFirst", "MixStyle", "RandomConvolution",
           "ValidationOverlays", "early_stages"]

log = logging.getLogger("wbc")


class ValidationOverlays(L.Callback):
    """Every n epochs, draw predicted (red) and true (green) nucleus contours on a few validation
    images and send them to wandb / TensorBoard (CSV-only runs skip this)."""

    def __init__(self, num_images: int = 4, every_n_epochs: int = 5) -> None:
        self.num_images = num_images
        self.every_n_epochs = max(1, every_n_epochs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.num_images <= 0 or trainer.current_epoch % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image") or hasattr(getattr(lg, "experiment", None), "add_image")]
        if not loggers or not hasattr(pl_module, "predict_probability"):
            return
        dm = trainer.datamodule
        ds = getattr(dm, "datasets", {}).get("val")
        if ds is None or len(ds) == 0:
            return
        items = [ds[i] for i in range(min(self.num_images, len(ds)))]
        x = torch.stack([it["image"] for it in items]).to(pl_module.device)
        prob = pl_module.predict_probability(x).float().cpu().numpy()[:, 0]
        panels = []
        for it, p in zip(items, prob):
            img = (it["image"].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
            truth = it["mask"].numpy()
            truth = truth[0] > 0.5 if truth.ndim == 3 else truth == 2
            panels.append(draw_overlay(img, p >= 0.5, truth))
        grid = np.concatenate(panels, axis=1)
        for lg in loggers:
            if hasattr(lg, "log_image"):
                lg.log_image(key="val/overlays", images=[grid], step=trainer.global_step)
            else:
                lg.experiment.add_image("val/overlays", grid, trainer.global_step, dataformats="HWC")


class EpochSeed(L.Callback):
    """Reseed torch/numpy/random at every training epoch start from (seed, epoch).

    Dropout and other in-model randomness then depend only on the epoch, so a run resumed
    from last.ckpt continues exactly as the uninterrupted run would have."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import random

        from datamodules.sampling import item_seed

        s = item_seed(self.seed, trainer.current_epoch, -2)
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)


class HeadFirst(L.Callback):
    """Train only the classifier's head for the first `epochs` epochs, its pretrained body frozen, then
    everything (LP-FT: fine-tuning under a random head distorts the ImageNet features, which costs most
    on images unlike the training ones; Kumar et al., ICLR 2022). `epochs` >= max_epochs trains the head
    alone (a linear probe). Freezing is decided at each epoch's start, so a resumed run does the same;
    the optimizer holds every parameter and skips those without gradients. While frozen, the body's
    batch norms run in eval mode too: in train mode their running statistics would go on moving with
    each head-only batch (no gradient stops that), so the "frozen" body would change under the head."""

    def __init__(self, epochs: int = 10) -> None:
        if int(epochs) < 1:
            raise ValueError(f"callbacks.head_first.epochs: expected >= 1 head-only epochs, got {epochs}")
        self.epochs = int(epochs)
        self._frozen = False
        self._norms: list[_BatchNorm] = []

    @staticmethod
    def _net_and_head(pl_module: L.LightningModule) -> tuple[torch.nn.Module, torch.nn.Module]:
        net = getattr(pl_module, "net", None)
        head = net.get_classifier() if hasattr(net, "get_classifier") else getattr(net, "head", None)
        if not isinstance(head, torch.nn.Module) or not any(True for _ in head.parameters()):
            raise ValueError(f"callbacks.head_first: {type(net).__name__} has no classification head to train first "
                             "(expected a timm classifier's get_classifier() or a `.head` module)")
        return net, head

    @classmethod
    def body(cls, pl_module: L.LightningModule) -> list[torch.nn.Parameter]:
        """The network's parameters outside its classification head (timm's get_classifier(), or `.head`)."""
        net, head = cls._net_and_head(pl_module)
        mine = {id(p) for p in head.parameters()}
        return [p for p in net.parameters() if id(p) not in mine]

    @classmethod
    def body_norms(cls, pl_module: L.LightningModule) -> list[_BatchNorm]:
        """The batch-norm layers outside the classification head."""
        net, head = cls._net_and_head(pl_module)
        mine = {id(m) for m in head.modules()}
        return [m for m in net.modules() if isinstance(m, _BatchNorm) and id(m) not in mine]

    def _train_body(self, pl_module: L.LightningModule, on: bool) -> None:
        for p in self.body(pl_module):
            p.requires_grad_(on)
        self._frozen = not on
        self._norms = self.body_norms(pl_module)  # found once an epoch, not on every batch
        net = getattr(pl_module, "net", None)
        for m in self._norms:
            m.train(on and net.training)  # unfrozen: back to the network's own mode

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        self._train_body(pl_module, not frozen)
        if trainer.current_epoch in (0, self.epochs):
            log.info("head_first: epoch %d trains %s", trainer.current_epoch, "the head only" if frozen else "the whole network")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._frozen:  # again each batch: Lightning puts the module back in train mode (each epoch, after validation)
            for m in self._norms:
                m.eval()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_body(pl_module, True)  # the module leaves training as it came


def early_stages(net: torch.nn.Module, most: int = 3) -> list[str]:
    """Module names of a network's first stages (all but its last, at most `most`): their outputs carry
    the style (stain, lighting) while still little of the class. Found by structure, an `encoder` first
    (an smp decoder has `blocks` too): timm EfficientNet/MobileNet `blocks.N` or `stages.N`, ResNet
    `layerN`, or a Sequential's pooling layers (the SmallCNN's `features` blocks end in one); [] if none."""
    named = sorted(net.named_modules(), key=lambda item: "encoder" not in item[0].split("."))
    for name, module in named:
        prefix, children = f"{name}." if name else "", dict(module.named_children())
        stages = next(([f"{prefix}{key}.{i}" for i in range(len(children[key]))] for key in ("blocks", "stages")
                       if isinstance(children.get(key), torch.nn.Sequential | torch.nn.ModuleList)), [])
        stages = stages or [f"{prefix}{key}" for key in sorted((k for k in children if k.startswith("layer") and k[5:].isdigit()), key=lambda k: int(k[5:]))]
        if not stages and isinstance(module, torch.nn.Sequential):
            stages = [f"{prefix}{key}" for key, child in children.items() if isinstance(child, torch.nn.MaxPool2d | torch.nn.AvgPool2d)]
        if len(stages) >= 2:
            return stages[:min(most, len(stages) - 1)]
    return []


class MixStyle(L.Callback):
    """While training, mix the feature statistics of the network's early stages between crops
    (`lightning_modules.mixing.mix_styles`, with probability `p` per stage and batch): a
    domain-generalisation lever for images from other labs. Forward hooks on `pl_module.net`'s
    modules named in `layers` (None: its first stages, `early_stages`, so one setting serves every
    network), attached at the start of training and removed at its end, acting only in training
    mode: validation, testing, exports and checkpoints never see them (no parameters)."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, layers: list[str] | tuple[str, ...] | None = None) -> None:
        if not 0.0 <= p <= 1.0 or alpha <= 0:
            raise ValueError(f"callbacks.mixstyle: expected p in [0, 1] and alpha > 0, got p={p}, alpha={alpha}")
        if layers is not None and not layers:
            raise ValueError("callbacks.mixstyle.layers: expected at least one module name of the network, or null")
        self.p, self.alpha = float(p), float(alpha)
        self.layers = None if layers is None else [str(name) for name in layers]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or not isinstance(output, torch.Tensor) or float(torch.rand(())) >= self.p:
            return None
        return mix_styles(output, self.alpha)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        modules = dict(net.named_modules())
        names = self.layers if self.layers is not None else early_stages(net)
        missing = [name for name in names if name not in modules]
        if missing or not names:
            stages = [n for n in modules if n and n.count(".") <= 1][:12]
            what = f"{missing} not found in" if missing else "null: found no early stages in"
            raise ValueError(f"callbacks.mixstyle.layers: {what} {type(net).__name__} (module names such as {stages})")
        if self.layers is None:
            log.info("mixstyle: mixing the outputs of %s (callbacks.mixstyle.layers=null)", names)
        self._remove()
        self._handles = [modules[name].register_forward_hook(self._hook) for name in names]

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove()


class RandomConvolution(L.Callback):
    """While training, pass each batch's crops (`batch[key]`) through a random convolution blended with
    the crop (`lightning_modules.mixing.random_convolution`, with probability `p` per batch): colour and
    texture of other labs' images vary, shapes stay. Training batches only; nothing is saved."""

    def __init__(self, p: float = 0.5, kernel_sizes: list[int] | tuple[int, ...] = (1, 3, 5, 7), key: str = "image") -> None:
        sizes = tuple(int(k) for k in kernel_sizes)
        if not 0.0 <= p <= 1.0 or not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
            raise ValueError(f"callbacks.randconv: expected p in [0, 1] and odd kernel_sizes >= 1, got p={p}, kernel_sizes={list(kernel_sizes)}")
        self.p, self.kernel_sizes, self.key = float(p), sizes, key

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if float(torch.rand(())) < self.p:
            with torch.no_grad():
                batch[self.key] = random_convolution(batch[self.key], self.kernel_sizes)


class AdaptBatchNorm(L.Callback):
    """Before testing, re-estimate the network's batch-norm statistics on the test images
    themselves (`wbc.adaptation.adapt_batchnorm`; their labels are not read). For a held-out
    lab's images: `callbacks=[default,adapt_bn]`. The temperature stays the one fitted on the
    training source's validation split.

    `entropy_epochs` > 0 then adds Tent's step (`wbc.adaptation.minimise_entropy`): that many
    shuffled passes over the test images moving only the batch-norm scales and shifts (Adam,
    `entropy_lr`) towards confident predictions. Off by default: see the README's figures.

    Both last for the test split only: the stage's own test scoring after trainer.test (predictions, test_eval/)
    still sees them, then `restore_after_test` (wbc.fit, before the validation split is scored: the fold's
    out-of-fold files) puts back what on_test_start saved."""

    def __init__(self, key: str = "image", seed: int = 0, entropy_epochs: int = 0, entropy_lr: float = 1e-3) -> None:
        if entropy_epochs < 0 or entropy_lr <= 0:
            raise ValueError(f"callbacks.adapt_bn: entropy_epochs={entropy_epochs} must be >= 0 and entropy_lr={entropy_lr} > 0")
        self.key = key
        self.seed = seed
        self.entropy_epochs = entropy_epochs
        self.entropy_lr = entropy_lr
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _save(self, pl_module: L.LightningModule) -> None:
        """The batch-norm buffers (and, with Tent, scales and shifts) that testing is about to change."""
        layers = batchnorm_layers(pl_module)
        keep = [t for m in layers for t in (m.running_mean, m.running_var, m.num_batches_tracked)]
        if self.entropy_epochs:
            keep += [p for m in layers for p in (m.weight, m.bias) if p is not None]
        self._saved = [(t, t.detach().clone()) for t in keep]

    def _restore(self) -> None:
        with torch.no_grad():
            for t, value in self._saved:
                t.copy_(value)
        self._saved = []

    def restore_after_test(self) -> None:
        """The statistics the model was trained with again: what runs after the test scoring (the stage's
        scoring of its validation split: the fold's out-of-fold predictions) must see the checkpoint's
        model, not one adapted to the test images."""
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.utils.data import DataLoader

        self._save(pl_module)

        loaders = trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        # the test loaders' own order follows the manifest (often sorted by class): batches of a
        # seeded shuffle instead, so that each batch's variance is the population's
        shuffled = [DataLoader(dl.dataset, batch_size=dl.batch_size or 1, shuffle=True, num_workers=0,
                               generator=torch.Generator().manual_seed(self.seed)) for dl in loaders]

        def batches():  # one pass; the loaders' generators go on, so each pass has a new order
            return (batch[self.key].to(pl_module.device) for loader in shuffled for batch in loader)

        n = adapt_batchnorm(pl_module, batches())
        if trainer.world_size > 1:
            # each rank saw its own shard: average the statistics so every rank tests one model
            for m in batchnorm_layers(pl_module):
                m.running_mean.copy_(trainer.strategy.reduce(m.running_mean, reduce_op="mean"))
                m.running_var.copy_(trainer.strategy.reduce(m.running_var, reduce_op="mean"))
        log.info("adapt_bn: batch-norm statistics re-estimated on %d test images", n)
        for _ in range(self.entropy_epochs):
            minimise_entropy(pl_module, batches(), self.entropy_lr)
        if self.entropy_epochs:
            if trainer.world_size > 1:
                for p in (p for m in batchnorm_layers(pl_module) for p in (m.weight, m.bias) if p is not None):
                    p.data.copy_(trainer.strategy.reduce(p.data, reduce_op="mean"))
            log.info("adapt_bn: %d entropy-minimisation pass(es) over the batch-norm scales and shifts", self.entropy_epochs)
