"""Sliding-window inference: a probability map of any size from a network that sees fixed tiles.

nnU-Net's recipe: overlapping tiles (step = tile * (1 - overlap)), each tile's prediction weighted
by a Gaussian that is highest in the tile centre (sigma = tile / 8), summed and divided by the
summed weights, so seams vanish and border pixels of a tile (seen with less context) count less.
Tiles go through the network in batches, so memory is bounded by `batch` tiles, not by the image.
Works with any `predict(x: Bx C x t x t) -> B x 1 x t x t` callable: a LightningModule's
`predict_probability` (test-time flips included per tile), an ensemble, or an onnxruntime session.
Pure torch: no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


def gaussian_weight(tile: int, sigma_scale: float = 1 / 8) -> torch.Tensor:
    """tile x tile importance map (max 1, never 0 so every pixel has weight)."""
    c = (tile - 1) / 2
    r = torch.arange(tile, dtype=torch.float32) - c
    g = torch.exp(-(r**2) / (2 * (tile * sigma_scale) ** 2))
    w = g[:, None] * g[None, :]
    return (w / w.max()).clamp_min(1e-3)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` and at least `overlap` overlap; the
    last tile ends exactly at `length` (length >= tile)."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    if n == 1:
        return [0]
    actual = (length - tile) / (n - 1)  # spread evenly: every overlap >= the requested one
    return [round(i * actual) for i in range(n)]


@torch.no_grad()
def sliding_window(predict: Predict, image: torch.Tensor, tile: int, overlap: float = 0.25, batch: int = 8) -> np.ndarray:
    """C x H x W float image (network preprocessing applied, any H, W) -> H x W probability.

    Images smaller than a tile along an axis are padded to the tile by reflection, repeated where the image
    is shorter than the padding (a one-pixel axis is replicated), and the padding is cut off again. Zeros
    there had drawn a black band beside a thin strip, and the segmenter lost 25-70 % of its nucleus pixels."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if image.ndim != 3:
        raise ValueError(f"image must be C x H x W, got shape {tuple(image.shape)}")
    _, h, w = image.shape
    ph, pw = max(0, tile - h), max(0, tile - w)
    if ph or pw:  # numpy's reflect repeats the reflection for any padding (torch's needs padding < size)
        padded = np.pad(image.cpu().numpy(), ((0, 0), (0, ph), (0, pw)), mode="reflect")
        image = torch.from_numpy(padded).to(image.device)
    H, W = image.shape[1:]
    weight = gaussian_weight(tile)
    acc = torch.zeros(H, W)
    norm = torch.zeros(H, W)
    boxes = [(y, x) for y in tile_starts(H, tile, overlap) for x in tile_starts(W, tile, overlap)]
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        x = torch.stack([image[:, y : y + tile, x0 : x0 + tile] for y, x0 in chunk])
        prob = predict(x).float().cpu()[:, 0]
        for (y, x0), p in zip(chunk, prob):
            acc[y : y + tile, x0 : x0 + tile] += p * weight
            norm[y : y + tile, x0 : x0 + tile] += weight
    return (acc / norm)[:h, :w].numpy()
