"""The training and evaluation samplers: repeated augmentation as the official sampler (each image 3 times,
the copies on different processes, the epoch cut to the data's length), and evaluation slices that cover
the validation data exactly once."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pvt.engine.samplers import RankSlice, RepeatedAugSampler, samples_per_rank


def _official(n: int, num_replicas: int, rank: int, epoch: int, shuffle: bool = True) -> list[int]:
    """DeiT's RASampler (samplers.py of facebookresearch/deit, which the official PVT code imports), transcribed."""
    num_samples = int(math.ceil(n * 3.0 / num_replicas))
    total_size = num_samples * num_replicas
    num_selected_samples = int(math.floor(n // 256 * 256 / num_replicas))
    g = torch.Generator()
    g.manual_seed(epoch)
    indices = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    indices = [ele for ele in indices for i in range(3)]
    indices += indices[: (total_size - len(indices))]
    indices = indices[rank:total_size:num_replicas]
    assert len(indices) == num_samples
    return indices[:num_selected_samples]


@pytest.mark.parametrize("n, world", [(1000, 2), (1281, 8), (777, 3), (512, 1)])
def test_seed_0_reads_exactly_the_official_sampler(n, world):
    for epoch in (0, 5):
        for rank in range(world):
            s = RepeatedAugSampler(n, world, rank, seed=0)
            s.set_epoch(epoch)
            ref = _official(n, world, rank, epoch)
            assert list(s) == ref
            assert len(s) == len(ref) == n // 256 * 256 // world  # the epoch length: the data's, cut to 256s


def test_which_indices_each_of_two_ranks_reads():
    """Shuffle off, 10 images, 2 processes: [0,0,0,1,1,1,...,9,9,9] dealt alternately, each rank cut to
    10 // 2 = 5; 300 images: the cut is 300 // 256 * 256 / 2 = 128 of each rank's 450."""
    assert [list(RepeatedAugSampler(10, 2, r, shuffle=False)) for r in (0, 1)] == [[0, 0, 1, 2, 2], [0, 1, 1, 2, 3]]
    for r in (0, 1):
        s = RepeatedAugSampler(300, 2, r, shuffle=False)
        assert list(s) == [k // 3 for k in range(r, 256, 2)] and len(s) == 128 and s.num_samples == 450
    # 7 images over 2 ranks: 21 entries padded from the start to 22, rank 1's last entry is index 0 again
    odd = RepeatedAugSampler(7, 2, 1, shuffle=False)
    odd.num_selected_samples = odd.num_samples
    assert list(odd) == [0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 0]


def test_timms_sampler_with_the_seed_added_to_the_epoch():
    """Ours is timm's RepeatAugSampler, its epoch shifted by the seed (and the under-256 cut, n // world)."""
    from timm.data.distributed_sampler import RepeatAugSampler

    for r in (0, 1):
        ours = RepeatedAugSampler(600, 2, r, seed=4)
        ours.set_epoch(2)
        timms = RepeatAugSampler(range(600), 2, r)
        timms.set_epoch(6)
        assert list(ours) == list(timms) and len(ours) == len(timms) == 256
    assert (len(RepeatAugSampler(range(25), 2, 0)), len(RepeatedAugSampler(25, 2, 0))) == (13, 12)


def test_two_ranks_see_each_image_three_times_spread_over_the_ranks():
    n, world = 1000, 2
    samplers = [RepeatedAugSampler(n, world, r, seed=3) for r in range(world)]
    for s in samplers:
        s.set_epoch(1)
    lists = [list(s) for s in samplers]
    seen = Counter(i for lst in lists for i in lst)
    assert sum(seen.values()) == 2 * (n // 256 * 256 // world) == 768  # as many reads as one pass over 768
    # the two lists together are the first 768 entries of the 3-fold list: 256 images, 3 copies each
    assert sorted(Counter(seen.values()).items()) == [(3, 256)]
    for i in seen:  # the 3 copies of an image are on both ranks (2 + 1), never 3 on one
        assert {lst.count(i) for lst in lists} == {1, 2}
    # without the cut every image of the data set is read exactly 3 times
    full = RepeatedAugSampler(n, world, 0, seed=3)
    full.num_selected_samples = full.num_samples
    other = RepeatedAugSampler(n, world, 1, seed=3)
    other.num_selected_samples = other.num_samples
    full.set_epoch(1), other.set_epoch(1)
    counts = Counter(list(full) + list(other))
    assert set(counts) == set(range(n)) and set(counts.values()) == {3}


def test_order_is_a_function_of_seed_and_epoch():
    a, b = RepeatedAugSampler(600, 2, 0, seed=7), RepeatedAugSampler(600, 2, 0, seed=7)
    for e in (0, 1, 2):
        a.set_epoch(e)
        list(a)
    b.set_epoch(2)  # a fresh sampler (a resumed run) at epoch 2 reads what one that ran epochs 0-2 reads
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(b) != list(a)
    assert list(RepeatedAugSampler(600, 2, 0, seed=8)) != list(RepeatedAugSampler(600, 2, 0, seed=7))
    plain = RepeatedAugSampler(600, 1, 0, shuffle=False)
    assert list(plain)[:7] == [0, 0, 0, 1, 1, 1, 2]


def test_epoch_length_for_small_data_and_without_repeats():
    assert samples_per_rank(1437, 1, True) == 1280  # the built-in digits
    assert samples_per_rank(1437, 1, False) == 1437
    assert samples_per_rank(24, 2, True) == 12  # under 256 images the official cut is 0: n // world instead
    assert samples_per_rank(25, 2, False) == 12  # DistributedSampler(drop_last=True)
    assert len(RepeatedAugSampler(24, 2, 1)) == 12
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        RepeatedAugSampler(24, 2, 2)


@pytest.mark.parametrize("n, world", [(9, 2), (7, 4), (3, 5), (50000, 8)])
def test_eval_slices_cover_the_data_exactly_once(n, world):
    parts = [list(RankSlice(n, world, r)) for r in range(world)]
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
