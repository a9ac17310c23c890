"""Mixup / CutMix (lightning_modules/mixing.py): off by default, blends images and loss alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.mixing import MixOptions, mix_batch, mixed_loss


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])


def test_off_by_default_leaves_the_batch_alone() -> None:
    x, y = batch()
    out, ya, yb, lam = mix_batch(x, y, MixOptions.from_config(None))
    assert out is x and lam == 1.0 and torch.equal(ya, y) and torch.equal(yb, y)


def test_mixup_is_a_convex_blend_of_two_crops() -> None:
    x, y = batch()
    out, ya, yb, lam = mix_batch(x, y, MixOptions(mixup_alpha=0.4))
    assert 0.0 <= lam <= 1.0 and torch.equal(ya, y)
    assert sorted(yb.tolist()) == sorted(y.tolist())  # labels of b: a permutation of the batch's
    perm = [next(j for j in range(len(x)) if torch.allclose(out[i], lam * x[i] + (1 - lam) * x[j])) for i in range(len(x))]
    assert [int(y[j]) for j in perm] == yb.tolist()
    assert out.min() >= 0 and out.max() <= 1


def test_cutmix_pastes_a_box_and_weights_by_its_area() -> None:
    x, y = batch()
    out, _ya, _yb, lam = mix_batch(x, y, MixOptions(cutmix_alpha=1.0))
    changed = (out != x).any(dim=1)  # B x H x W: pixels taken from the partner
    kept = 1.0 - changed.float().mean(dim=(1, 2))
    # where the partner's pixel differs (always, for random images), the kept share is lam exactly
    assert torch.allclose(kept, torch.full_like(kept, lam), atol=1e-6)


def test_the_loss_is_blended_like_the_targets() -> None:
    logits = torch.randn(4, 3)
    ya, yb = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    ce = nn.CrossEntropyLoss()
    assert torch.isclose(mixed_loss(ce, logits, ya, yb, 0.25), 0.25 * ce(logits, ya) + 0.75 * ce(logits, yb))
    assert torch.equal(mixed_loss(ce, logits, ya, yb, 1.0), ce(logits, ya))


@pytest.mark.parametrize("cfg", [{"mixup_alpha": -1}, {"prob": 1.5}])
def test_bad_options_name_the_key(cfg: dict) -> None:
    with pytest.raises(ValueError, match="model.mixing"):
        MixOptions.from_config(cfg)
