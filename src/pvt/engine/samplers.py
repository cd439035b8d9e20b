"""Which images each process reads: DeiT's repeated-augmentation sampler for training, and an unpadded
slice for evaluation.

Repeated augmentation (Hoffer et al. 2020, "Augment your batch"; Berman et al. 2019) is on by default in
the official PVT / DeiT classification code: every index of a shuffled epoch is written 3 times in a row
and the list is dealt round-robin to the processes, so the 3 copies of an image land on different
processes (in different augmentations) within the same step. Each process then keeps only the first
``len(data) // 256 * 256 / world_size`` indices: an epoch is as long as one pass over the data set, of
which it shows about a third of the images, 3 times each.

Distributed evaluation must score every image exactly once. ``torch.utils.data.DistributedSampler``
pads the index list with duplicates to make it divisible by the number of processes (the official
``--dist-eval`` warns that this alters the result); :class:`RankSlice` gives each process a contiguous,
unpadded slice instead, and the engine adds up the per-process sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["RepeatedAugSampler", "RankSlice", "samples_per_rank", "REPEATS"]

REPEATS = 3
"""Copies of each image per epoch under repeated augmentation (the official sampler's constant)."""


def samples_per_rank(n: int, world_size: int, repeated_aug: bool) -> int:
    """Training samples each process reads per epoch from a data set of ``n`` images.

    Repeated augmentation: the official cut, ``n // 256 * 256 / world_size`` (floored); for data sets of
    fewer than 256 images, where that is 0, ``n // world_size``. Otherwise
    ``DistributedSampler(drop_last=True)``'s ``n // world_size``. Streaming (shard) data sets read the
    same number, so folder and shard runs have the same steps and schedule.
    """
    if repeated_aug and n >= 256:
        return int(math.floor(n // 256 * 256 / world_size))
    return n // world_size


class RepeatedAugSampler(Sampler[int]):
    """DeiT's ``RASampler``: each index ``repeats`` times, spread over the ``num_replicas`` processes.

    Per epoch, with ``g = torch.Generator().manual_seed(seed + epoch)``: ``randperm(n, g)`` (``arange`` when
    ``shuffle`` is off), each index repeated ``repeats`` times in a row, padded from its start to a multiple
    of ``num_replicas``, every ``num_replicas``-th index from ``rank``, cut to :func:`samples_per_rank`.
    With ``seed=0`` this is the official sampler's list exactly (it seeds with the epoch alone); the seed
    is added so that runs with different seeds see different orders. The order is a function of
    ``(seed, epoch)`` only, so a resumed run reads what an uninterrupted one would.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, *, seed: int = 0, shuffle: bool = True,
                 repeats: int = REPEATS):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.n, self.num_replicas, self.rank = n, num_replicas, rank
        self.seed, self.shuffle, self.repeats = seed, shuffle, repeats
        self.epoch = 0
        self.num_samples = int(math.ceil(n * repeats / num_replicas))
        self.total_size = self.num_samples * num_replicas
        self.num_selected = samples_per_rank(n, num_replicas, repeated_aug=True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        """This process's indices for the current epoch."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        rep = [i for i in order for _ in range(self.repeats)]
        rep += rep[: self.total_size - len(rep)]
        return rep[self.rank : self.total_size : self.num_replicas][: self.num_selected]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.num_selected


class RankSlice(Sampler[int]):
    """Indices ``[n * rank // world, n * (rank + 1) // world)`` in order: the processes' slices cover
    ``range(n)`` exactly once, whatever ``n`` (no padding, no duplicates; the first slices may be one
    shorter)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.start, self.stop = n * rank // num_replicas, n * (rank + 1) // num_replicas

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
