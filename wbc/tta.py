"""Test-time augmentation views, one home for the classifier, the segmenter, evaluate.py and the
ONNX export (they all go through the modules' `views` / `probability`)."""

from __future__ import annotations

import torch

# the test-time-augmentation views (model.tta): `true` (or "flips") averages the identity and the three
# flips; "dihedral" adds their four transposes (the 90 degree rotations and the two diagonal mirrors).
# A cell has no up or left, and training flips and rotates too
TTA_VIEWS: dict[object, int] = {None: 1, False: 1, "none": 1, True: 4, "flips": 4, "dihedral": 8}


def tta_count(tta: object, key: str = "model.tta") -> int:
    """How many views `tta` averages (1: none); any other value is one error naming the key."""
    if isinstance(tta, str):
        tta = tta.lower()
    if (tta is None or isinstance(tta, bool | str)) and tta in TTA_VIEWS:  # not 0 / 1: True == 1
        return TTA_VIEWS[tta]
    raise ValueError(f"{key}={tta!r}: expected true (the four flips), false, flips or dihedral (flips and transposes)")


def _flip_dims(k: int) -> tuple[int, ...]:
    return tuple(d for bit, d in ((1, -1), (2, -2)) if k & bit)


def tta_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """View k (0-7) of an N x C x H x W batch: transposed when bit 2 is set, then flipped along W (bit
    0) and H (bit 1). Views 0-3 are the identity and the three flips, in the order `true` always used."""
    x = x.transpose(-2, -1) if k & 4 else x
    dims = _flip_dims(k)
    return x.flip(dims) if dims else x


def tta_unview(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of `tta_view(., k)`: a view's dense prediction back onto the image's pixels."""
    dims = _flip_dims(k)
    y = y.flip(dims) if dims else y
    return y.transpose(-2, -1) if k & 4 else y
