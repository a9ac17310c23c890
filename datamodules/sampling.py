"""Epoch-keyed sampling and augmentation seeds: identical batches and augmentations for a seed,
whatever the worker count, and an interrupted run resumed from `last.ckpt` replays exactly.

The sampler (main process) yields `epoch * n + i`; the dataset decodes (epoch, i) and seeds the
albumentations pipeline from (seed, epoch, i). albumentations keeps its own RNG, independent of
`seed_everything`, so without this its augmentations would differ on every run. A balanced sampler
draws with replacement: the k-th repeat (k >= 1) of item i in an epoch is sent as a negative index
(`draw_index`) and seeded from (seed, epoch, i, k), so every copy gets its own augmentation (they
were pixel-identical) while first draws, and every unweighted epoch, keep their earlier indices and seeds.

Under DDP each rank gets a shard of that same epoch order (`DistributedEpochSampler`: position p of
the order goes to rank p % world_size, as torch's DistributedSampler deals them), so the union of the
shards is the single-process epoch, item for item and augmentation for augmentation. Evaluation
splits get `ShardSampler`: every item exactly once over the ranks, no padding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler


def item_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """A 32-bit seed from (seed, epoch, index) and, for an item's repeat >= 1 within an epoch, the repeat;
    index < 0 names a per-epoch stream (order, model)."""
    entropy = [seed & 0xFFFFFFFF, epoch, index & 0xFFFFFFFF] + ([repeat] if repeat else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def draw_index(n: int, epoch: int, item: int, repeat: int = 0) -> int:
    """The sampler index of an epoch's draw of `item`, its `repeat`-th (0: first) in that epoch.

    A first draw is `epoch * n + item`, as it always was (unweighted epochs, resumes of older runs);
    a repeat is `item - (epoch * n + repeat) * n`, negative, so that it cannot clash with a first
    draw. Either way `index % n == item`."""
    if not repeat:
        return epoch * n + item
    if not 0 < repeat < n:
        raise ValueError(f"an epoch of {n} draws repeats an item at most {n - 1} times, got repeat {repeat}")
    return item - (epoch * n + repeat) * n


def split_index(idx: int, n: int) -> tuple[int, int, int]:
    """(epoch, item, repeat) of a sampler index (`draw_index`'s inverse); a plain index < n is epoch 0."""
    q, item = divmod(int(idx), n)
    if q >= 0:
        return q, item, 0
    epoch, repeat = divmod(-q, n)
    return epoch, item, repeat


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
    """The epoch's sampler indices (`draw_index`), drawn from (seed, epoch) only: shuffled, class-
    balanced with replacement (`weights`: an item's repeats numbered in draw order), or in order."""
    g = torch.Generator().manual_seed(item_seed(seed, epoch, -1))
    if weights is not None:
        drawn = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
        seen: Counter[int] = Counter()
        order = []
        for item in drawn:
            order.append(draw_index(n, epoch, item, seen[item]))
            seen[item] += 1
        return order
    if shuffle:
        return (epoch * n + torch.randperm(n, generator=g)).tolist()
    return list(range(epoch * n, epoch * n + n))


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


def balanced_weights(labels: Sequence[int], parts: Sequence[str] | None = None, part_weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Each item weighted by 1 / its class frequency: classes drawn about uniformly.

    With `parts` (each item's part of a combined data config) and `part_weights` (`data.part_weights`,
    1 for a part not named): w_i = part_weights[p] / (K_p * n_{p,c(i)}), K_p the classes present in
    part p and n_{p,c} its items of class c. Each part then gets its asked share of an epoch and
    draws its own classes uniformly. Multiplying the global 1 / n_c by the part's weight / size
    honoured neither: a part holding a rare class took most of the epoch, and the classes of the
    other parts came out far from uniform."""
    labels = np.asarray(labels)
    if parts is None:
        counts = np.bincount(labels)
        return 1.0 / counts[labels]
    weights = part_weights or {}
    pairs = Counter(zip(parts, labels.tolist(), strict=True))
    classes_in = Counter(p for p, _ in pairs)
    return np.array([weights.get(p, 1.0) / (classes_in[p] * pairs[p, c]) for p, c in zip(parts, labels.tolist(), strict=True)], dtype=np.float64)


class SeededAugmentation:
    """Mixin for datasets: map a sampler index to (item, seed) and seed the pipeline with it."""

    seed: int = 0
    pipeline = None
    augment: bool = False

    def resolve(self, idx: int) -> int:
        epoch, i, repeat = split_index(idx, len(self))  # type: ignore[arg-type]
        if self.augment and self.pipeline is not None:
            self.pipeline.set_random_seed(item_seed(self.seed, epoch, i, repeat))
        return i
