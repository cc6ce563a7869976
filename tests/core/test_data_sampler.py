"""The batch sampler: deterministic, length-grouped, rank-partitioned, resumable mid-epoch."""

from __future__ import annotations

import random

from xt.data import ResumableBatchSampler

_RNG = random.Random(1)
LENGTHS = [_RNG.randint(1, 500) for _ in range(1000)]


def _epoch(sampler):
    return [list(b) for b in sampler]


def test_deterministic_per_seed_and_epoch():
    a = _epoch(ResumableBatchSampler(LENGTHS, 8, seed=3))
    b = _epoch(ResumableBatchSampler(LENGTHS, 8, seed=3))
    c = _epoch(ResumableBatchSampler(LENGTHS, 8, seed=4))
    assert a == b and a != c
    s = ResumableBatchSampler(LENGTHS, 8, seed=3)
    s.set_epoch(1)
    assert _epoch(s) != a
    assert len(a) == len(ResumableBatchSampler(LENGTHS, 8)) == 125
    assert sorted(i for batch in a for i in batch) == list(range(1000))


def test_length_grouping_groups_and_shuffles_batches():
    grouped = _epoch(ResumableBatchSampler(LENGTHS, 16, seed=0, group_by_length=True))
    plain = _epoch(ResumableBatchSampler(LENGTHS, 16, seed=0))

    def spread(batches):
        return sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches) / len(batches)

    assert spread(grouped) < spread(plain) / 5
    firsts = [max(LENGTHS[i] for i in b) for b in grouped]
    assert firsts != sorted(firsts, reverse=True)  # batch order is shuffled, not longest-first
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)


def test_ranks_partition_the_data():
    for grouped in (False, True):
        per_rank = [_epoch(ResumableBatchSampler(LENGTHS, 4, rank=r, world_size=3, seed=5, group_by_length=grouped))
                    for r in range(3)]
        assert len({len(b) for b in per_rank}) == 1
        seen = [i for batches in per_rank for b in batches for i in b]
        assert len(seen) == len(set(seen)) == 996  # 1000 - 1000 % 12 with drop_last
    padded = [_epoch(ResumableBatchSampler(LENGTHS[:10], 4, rank=r, world_size=3, drop_last=False)) for r in range(3)]
    assert all(len(b) == 1 for b in padded)
    assert set(i for batches in padded for b in batches for i in b) == set(range(10))


def test_state_dict_resumes_exactly_mid_epoch():
    full = ResumableBatchSampler(LENGTHS, 8, rank=1, world_size=2, seed=9, group_by_length=True)
    full.set_epoch(2)
    expected = _epoch(full)
    s = ResumableBatchSampler(LENGTHS, 8, rank=1, world_size=2, seed=9, group_by_length=True)
    s.set_epoch(2)
    it = iter(s)
    head = [next(it) for _ in range(17)]
    state = s.state_dict()
    assert state["epoch"] == 2 and state["position"] == 17
    resumed = ResumableBatchSampler(LENGTHS, 8, rank=1, world_size=2, seed=0, group_by_length=True)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what a training loop does at the top of the epoch: keeps the position
    assert head + _epoch(resumed) == expected
    assert resumed.state_dict()["epoch"] == 3 and resumed.state_dict()["position"] == 0


def test_groups_never_share_a_global_batch_and_resume_exactly():
    from xt.data import ResumableBatchSampler

    lengths = list(range(1, 42))
    groups = [i % 3 == 0 for i in range(len(lengths))]
    make = lambda: ResumableBatchSampler(lengths, 2, rank=0, world_size=2, seed=5, groups=groups,  # noqa: E731
                                         group_by_length=True)
    sampler = make()
    batches = list(sampler)
    assert len(batches) == len(sampler) == 14 // 4 + 27 // 4
    for global_batch in sampler._global_batches():
        assert len({groups[i] for i in global_batch}) == 1
    again = make()
    it = iter(again)
    head = [next(it) for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(again.state_dict())
    assert head + list(resumed) == batches
