"""Batch-norm statistics re-estimated on a new lab's unlabelled images (AdaBN, Li et al. 2017).

A network trained on one microscope normalises every layer with that microscope's feature means and
variances. On another lab's smears those statistics are off, and the classifier's features drift
before any weight is wrong. Re-estimating only the batch-norm running statistics on the new images
(no labels, no gradient, weights untouched) is the cheapest domain adaptation there is; what it buys
here is measured in `benchmarks/cross_dataset.py` and the README's "Models that travel".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

MODELS = ("segmenter", "classifier")


def adapt_targets(value: object, key: str = "adapt_bn") -> tuple[str, ...]:
    """Which models `adapt_bn=<value>` adapts: false -> none, true / all -> both, or one of MODELS.
    (Measured: AdaBN lifted the classifier across sources but cost a segmenter up to 24 Dice points,
    so the classifier alone is a choice of its own.)"""
    if value is None or value is False or str(value).lower() in ("false", "none", "0", ""):
        return ()
    if value is True or str(value).lower() in ("true", "all", "1"):
        return MODELS
    if str(value) in MODELS:
        return (str(value),)
    raise ValueError(f"{key}={value!r}: expected false, true (both models), segmenter or classifier")


def batchnorm_layers(*nets: nn.Module) -> list[_BatchNorm]:
    return [m for net in nets for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def collecting_batchnorm_statistics(*nets: nn.Module) -> Iterator[None]:
    """Inside the block every batch-norm layer of `nets` starts from reset statistics, normalises
    with each batch's own, and keeps their plain average (momentum None) as its running statistics;
    everything else runs as in eval mode. On leaving, the nets' train/eval modes and momenta are
    restored. A layer that saw no batch keeps its old statistics (so a net that was never called is
    left untouched). Raises ValueError when the nets hold no batch norm."""
    layers = batchnorm_layers(*nets)
    if not layers:
        raise ValueError("adapt_bn: the network has no batch-norm layer to adapt (an ONNX export cannot be adapted)")
    modes = [net.training for net in nets]
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    for net in nets:
        net.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, not an exponential one
        m.train()
    try:
        yield
    finally:
        for m, momentum, mean, var, count in saved:
            m.momentum = momentum
            if int(m.num_batches_tracked) == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        for net, mode in zip(nets, modes, strict=True):
            net.train(mode)


@torch.no_grad()
def adapt_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object] | None = None) -> int:
    """Replace every batch-norm layer's running mean and variance by their average over `batches`
    (image tensors, as the network takes them; `forward` calls it, default `net(x)`); returns the
    number of images seen. Weights, other buffers and the train/eval mode are left as they were.
    Raises ValueError for a network without batch norm or an empty `batches` (the statistics are
    then left as they were)."""
    seen = 0
    with collecting_batchnorm_statistics(net):
        for x in batches:
            try:
                (forward or net)(x)
            except ValueError as err:  # torch: "Expected more than 1 value per channel when training"
                raise ValueError(f"adapt_bn: a batch of {len(x)} gives a batch-norm layer one value per channel "
                                 f"(its feature map is 1x1 at this input size); adapt on more images ({err})") from err
            seen += len(x)
    if seen == 0:
        raise ValueError("adapt_bn: no images to adapt on")
    return seen


def batches_of(n: int, size: int) -> list[slice]:
    """Slices of range(n) in batches of `size`, a last batch of one merged into the one before
    (a batch-norm layer cannot take the statistics of a single 1x1 feature map)."""
    cuts = list(range(0, n, size)) + [n]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] == 1:
        del cuts[-2]
    return [slice(a, b) for a, b in zip(cuts, cuts[1:])]


def minimise_entropy(net: nn.Module, batches: Iterable[torch.Tensor], lr: float = 1e-3,
                     forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """Tent's step (Wang et al. 2021) on top of AdaBN: only the batch-norm scales and shifts move,
    by Adam, so that the predictions on the new images become confident (mean entropy of the
    softmax of `forward(x)`, default `net(x)`: logits); one step per batch. The net stays in eval
    mode, so each image is normalised by the running statistics it will meet at inference (those
    AdaBN just set), and every other weight keeps its value. Returns the number of images seen.
    (Entropy minimisation can collapse onto one class on a small, skewed set: judge it on the
    held-out figures, as benchmarks/cross_dataset.py --entropy does.)"""
    layers = batchnorm_layers(net)
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    if not params:
        raise ValueError("adapt_bn: the network has no batch-norm scale or shift to adapt")
    flags = {p: p.requires_grad for p in net.parameters()}
    mode = net.training
    seen = 0
    try:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        with torch.inference_mode(False), torch.enable_grad():  # Lightning tests under inference mode
            for x in batches:
                logits = (forward or net)(x.clone())
                loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(x)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        net.train(mode)
    if seen == 0:
        raise ValueError("adapt_bn: no images to adapt on")
    return seen
