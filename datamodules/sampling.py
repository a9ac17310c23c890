"""Epoch-keyed sampling and augmentation seeds: identical batches and augmentations for a seed,
whatever the worker count, and an interrupted run resumed from `last.ckpt` replays exactly.

The sampler (main process) yields `epoch * n + i`; the dataset decodes (epoch, i) and seeds the
albumentations pipeline from (seed, epoch, i). albumentations keeps its own RNG, independent of
`seed_everything`, so without this its augmentations would differ on every run.

Under DDP each rank gets a shard of that same epoch order (`DistributedEpochSampler`: position p of
the order goes to rank p % world_size, as torch's DistributedSampler deals them), so the union of the
shards is the single-process epoch, item for item and augmentation for augmentation. Evaluation
splits get `ShardSampler`: every item exactly once over the ranks, no padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler


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
        order = epoch_order(self.n, self.seed, self.epoch, self.weights, self.shuffle)
        if not self._explicit:
            self.epoch += 1
        self._explicit = False
        return iter(order)


def epoch_order(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None, shuffle: bool = True) -> list[int]:
    """The epoch's sampler indices (`epoch * n + i`), drawn from (seed, epoch) only: shuffled, class-
    balanced with replacement (`weights`), or in order."""
    g = torch.Generator().manual_seed(item_seed(seed, epoch, -1))
    if weights is not None:
        order = torch.multinomial(weights, n, replacement=True, generator=g)
    elif shuffle:
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    return (epoch * n + order).tolist()


class DistributedEpochSampler(DistributedSampler):
    """EpochSampler's order dealt to `num_replicas` ranks: rank r takes positions r, r + R, r + 2R, ...

    A DistributedSampler subclass, so Lightning uses it as it is (and calls `set_epoch`) instead of
    wrapping it. The ranks must run the same number of steps (DDP syncs gradients every step), so,
    as torch's DistributedSampler does, an epoch of n items is padded to a multiple of R with the
    first positions of the order again: up to R - 1 items are seen twice per epoch, and nothing else
    differs from the single-process epoch (order, items and their augmentation seeds).
    """

    def __init__(self, n: int, num_replicas: int, rank: int, seed: int = 0, weights: Sequence[float] | None = None, shuffle: bool = True) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.n = n
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.n, self.seed, self.epoch, self.weights, self.shuffle)
        pad = self.total_size - self.n
        if pad and self.n:  # the head of the order again (repeated when there are fewer items than ranks)
            order += (order * -(-pad // self.n))[:pad]
        return iter(order[self.rank : self.total_size : self.num_replicas])


class ShardSampler(DistributedSampler):
    """Evaluation under DDP: rank r takes items r, r + R, ... in order, each item exactly once over
    the ranks (no padding, so shards may differ by one item). Lightning keeps it as it is; its own
    replacement pads, and a padded item would count twice in the logged test metrics."""

    def __init__(self, n: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.n = n
        self.num_samples = len(range(rank, n, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


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
