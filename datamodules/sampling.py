"""Epoch-keyed sampling and augmentation seeds: identical batches and augmentations for a seed,
whatever the worker count, and an interrupted run resumed from `last.ckpt` replays exactly.

The sampler (main process) yields `epoch * n + i`; the dataset decodes (epoch, i) and seeds the
albumentations pipeline from (seed, epoch, i). albumentations keeps its own RNG, independent of
`seed_everything`, so without this its augmentations would differ on every run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed from (seed, epoch, index); index < 0 names a per-epoch stream (order, model)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index & 0xFFFFFFFF]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Shuffled (or class-balanced, with replacement) order drawn from (seed, epoch) only.

    Lightning calls `set_epoch` at each epoch start; if nobody does (e.g. inside a DDP wrapper),
    the epoch advances by itself after each pass.
    """

    def __init__(self, n: int, seed: int = 0, weights: Sequence[float] | None = None, shuffle: bool = True) -> None:
        self.n = n
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.shuffle = shuffle
        self.epoch = 0
        self._explicit = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._explicit = True

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, -1))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        base = self.epoch * self.n
        if not self._explicit:
            self.epoch += 1
        self._explicit = False
        return iter((base + order).tolist())


def balanced_weights(labels: Sequence[int]) -> np.ndarray:
    """Each item weighted by 1 / its class frequency: classes drawn about uniformly."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


class SeededAugmentation:
    """Mixin for datasets: map a sampler index to (item, seed) and seed the pipeline with it."""

    seed: int = 0
    pipeline = None
    augment: bool = False

    def resolve(self, idx: int) -> int:
        n = len(self)  # type: ignore[arg-type]
        epoch, i = divmod(int(idx), n)
        if self.augment and self.pipeline is not None:
            self.pipeline.set_random_seed(item_seed(self.seed, epoch, i))
        return i
