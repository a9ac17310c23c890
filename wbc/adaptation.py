"""Batch-norm statistics re-estimated on a new lab's unlabelled images (AdaBN, Li et al. 2017).

A network trained on one microscope normalises every layer with that microscope's feature means and
variances. On another lab's smears those statistics are off, and the classifier's features drift
before any weight is wrong. Re-estimating only the batch-norm running statistics on the new images
(no labels, no gradient, weights untouched) is the cheapest domain adaptation there is; whether it
helps here is measured in `benchmarks/cross_dataset.py`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(net: nn.Module) -> list[_BatchNorm]:
    return [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adapt_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every batch-norm layer's running mean and variance by their average over `batches`
    (image tensors, as the network takes them); returns the number of images seen. The weights,
    the other buffers and the module's train/eval mode are left as they were. Raises ValueError when
    the network has no batch norm or `batches` is empty: the statistics would otherwise be reset to
    0/1 and the network broken."""
    layers = batchnorm_layers(net)
    if not layers:
        raise ValueError("adapt_batchnorm: the network has no batch-norm layer to adapt")
    was_training = net.training
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    net.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, not an exponential one
        m.train()
    seen = 0
    try:
        for x in batches:
            net(x)
            seen += len(x)
    finally:
        for m, momentum, *_ in saved:
            m.momentum = momentum
        net.train(was_training)
    if seen == 0:
        for m, _, mean, var, count in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        raise ValueError("adapt_batchnorm: no images to adapt on")
    return seen
