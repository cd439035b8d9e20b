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

from timm.data.distributed_sampler import RepeatAugSampler
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


class RepeatedAugSampler(RepeatAugSampler):
    """timm's ``RepeatAugSampler`` (DeiT's ``RASampler``): each index ``repeats`` times, spread over the
    ``num_replicas`` processes, each process cut to :func:`samples_per_rank`.

    Per epoch: ``randperm(n)`` (``arange`` when ``shuffle`` is off) from a generator seeded with
    ``seed + epoch``, each index repeated ``repeats`` times in a row, padded from its start to a multiple of
    ``num_replicas``, every ``num_replicas``-th index from ``rank``. The order is a function of
    ``(seed, epoch)`` only, so a resumed run reads what an uninterrupted one would.

    Ours differs from timm's only where the official sampler leaves a choice: it seeds with ``seed + epoch``
    (timm and the official code with the epoch alone, which ``seed=0`` reproduces exactly) and under 256 images,
    where the official cut is 0, each process reads ``n // num_replicas`` (timm: rounded up).
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, *, seed: int = 0, shuffle: bool = True,
                 repeats: int = REPEATS):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        super().__init__(range(n), num_replicas, rank, shuffle=shuffle, num_repeats=repeats)
        self.seed = seed
        self.num_selected_samples = samples_per_rank(n, num_replicas, repeated_aug=True)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.seed + epoch)  # timm seeds its generator with the epoch


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
