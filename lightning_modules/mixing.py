"""Mixup and CutMix for the classifier: training crops blended in pairs, the loss blended alike;
MixStyle: feature statistics blended in pairs; RandConv: each crop blended with a randomly filtered
copy of itself (the labels untouched in both).

Mixup (Zhang et al. 2018) averages two crops and their targets; CutMix (Yun et al. 2019) pastes a
box of one crop into another and weights the targets by the box's area. Both regularise a network
trained on a few hundred crops. The loss is mixed rather than the labels, so any classification
loss (weighted CE, focal) keeps working with hard targets: lam * L(y_a) + (1 - lam) * L(y_b).
MixStyle (Zhou et al., ICLR 2021) mixes each early feature map's per-channel mean and spread with
another crop's: those statistics carry the image's "style" (stain, lighting, camera), the normalised
map its content, so the network sees new styles of the same cells. RandConv (Xu et al., ICLR 2021)
passes crops through a random convolution: colour and local texture change, shapes stay. Draws come
from torch's global generator, seeded by `seed_everything`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixOptions:
    """`model.mixing`: Beta(alpha, alpha) mixing weights; 0 turns that kind off. When both are on,
    each mixed batch is CutMix or Mixup with equal chance; `prob` of the batches are mixed."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> MixOptions:
        opts = cls(**dict(cfg or {}))
        for key in ("mixup_alpha", "cutmix_alpha"):
            if not float(getattr(opts, key)) >= 0:
                raise ValueError(f"model.mixing.{key} must be >= 0 (0 = off), got {getattr(opts, key)!r}")
        if not 0.0 <= float(opts.prob) <= 1.0:
            raise ValueError(f"model.mixing.prob must be in [0, 1], got {opts.prob!r}")
        return opts

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def mix_batch(x: torch.Tensor, y: torch.Tensor, opts: MixOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(mixed images, labels a, labels b, weight of a). lam = 1 leaves the batch as it was."""
    if not opts.active or len(x) < 2 or float(torch.rand(())) >= opts.prob:
        return x, y, y, 1.0
    perm = torch.randperm(len(x), device=x.device)
    use_cutmix = opts.cutmix_alpha > 0 and (opts.mixup_alpha <= 0 or float(torch.rand(())) < 0.5)
    if not use_cutmix:
        lam = _beta(opts.mixup_alpha)
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam
    lam = _beta(opts.cutmix_alpha)
    h, w = x.shape[-2:]
    cut_h, cut_w = round(h * (1 - lam) ** 0.5), round(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, w)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the box as clipped by the border
    return mixed, y, y[perm], lam


def mixed_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    if lam >= 1.0:
        return criterion(logits, y_a)
    return lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)


def mix_styles(x: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """One MixStyle draw on a (N, C, H, W) feature map: each sample's per-channel mean and standard
    deviation replaced by a Beta(alpha, alpha) blend of its own and a random partner's (the statistics
    detached, as in the paper, so no gradient flows through the style). A batch of one is returned as is."""
    if x.ndim != 4 or len(x) < 2:
        return x
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
    normed = (x - mu) / sig
    lam = torch.distributions.Beta(alpha, alpha).sample((len(x), 1, 1, 1)).to(device=x.device, dtype=x.dtype)
    perm = torch.randperm(len(x), device=x.device)
    return normed * (lam * sig + (1 - lam) * sig[perm]) + lam * mu + (1 - lam) * mu[perm]


def random_convolution(x: torch.Tensor, kernel_sizes: tuple[int, ...] = (1, 3, 5, 7), eps: float = 1e-6) -> torch.Tensor:
    """RandConv_mix on a (N, C, H, W) batch of [0, 1] images: one random C -> C convolution per batch
    (kernel size drawn from `kernel_sizes`, He-style Gaussian weights), its output brought back to each
    crop's own per-channel mean and spread (so brightness stays in range), then blended with the crop by
    a U(0, 1) weight per crop and clipped to [0, 1]."""
    if x.ndim != 4:
        return x
    n, c = x.shape[:2]
    k = kernel_sizes[int(torch.randint(len(kernel_sizes), ()))]
    weight = torch.randn(c, c, k, k, device=x.device, dtype=x.dtype) / (k * k * c) ** 0.5
    y = torch.nn.functional.conv2d(x, weight, padding=k // 2)
    mu, sig = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
    y = (y - y.mean(dim=(2, 3), keepdim=True)) / (y.std(dim=(2, 3), keepdim=True) + eps) * sig + mu
    a = torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype)
    return (a * x + (1 - a) * y).clamp(0, 1)
