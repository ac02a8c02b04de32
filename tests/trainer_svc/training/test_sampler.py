"""The batch sampler yields the plan's indices lazily and refuses to read ahead of it."""

import pytest
import torch

from trainer_svc.training.sampler import ScheduleBatchSampler, SelectionNotReady, SelectionPlan
from trainer_svc.training.schedule import Schedule, draw_warmup, training_order


def plan(n=20):
    s = Schedule.build(warmup_step=1, update_step=2, update_times=1, batch=4, epochs=1)
    return SelectionPlan(s, n)


def test_micro_batches_split_each_step_in_order():
    p = plan()
    p.set_segment(p.schedule.segment_at(1), torch.arange(8))
    batches = list(ScheduleBatchSampler(p, micro_batch=2))
    warm = training_order(draw_warmup(20, 4), 42).tolist()
    order = training_order(torch.arange(8), 42).tolist()
    assert batches == [warm[:2], warm[2:], order[0:2], order[2:4], order[4:6], order[6:8]]
    assert len(ScheduleBatchSampler(p, micro_batch=2)) == 6


def test_each_segment_trains_its_draw_shuffled_by_the_configs_seed():
    s = Schedule.build(warmup_step=1, update_step=2, update_times=1, batch=4, epochs=1)
    p = SelectionPlan(s, 50, shuffle_seed=7)
    draw = torch.arange(8) + 10
    p.set_segment(s.segment_at(1), draw)
    trained = torch.cat([p.step_indices(1), p.step_indices(2)])
    # the same samples, each as often as drawn, in the order randperm seeded 7 gives
    assert sorted(trained.tolist()) == draw.tolist()
    assert trained.tolist() != draw.tolist()
    expected = draw[torch.randperm(8, generator=torch.Generator().manual_seed(7))]
    assert trained.tolist() == expected.tolist()


def test_iterating_is_lazy_and_fails_before_the_update_is_selected():
    p = plan()
    it = iter(ScheduleBatchSampler(p, micro_batch=4))
    next(it)  # warmup step: drawn on demand
    with pytest.raises(SelectionNotReady, match="update 1"):
        next(it)


def test_segment_size_is_checked():
    p = plan()
    with pytest.raises(ValueError, match="needs 8 indices"):
        p.set_segment(p.schedule.segment_at(1), torch.arange(6))


def test_micro_batch_must_divide_b():
    with pytest.raises(ValueError, match="multiple"):
        ScheduleBatchSampler(plan(), micro_batch=3)


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_train_disjoint_slices_whose_union_is_each_step(world):
    schedule = Schedule.build(warmup_step=2, update_step=2, update_times=1, batch=8, epochs=1)
    plan = SelectionPlan(schedule, 50)
    plan.set_segment(schedule.segment_at(2), torch.arange(16) + 30)
    per_rank = [
        list(ScheduleBatchSampler(plan, 2 if world == 2 else 1, rank=r, world=world))
        for r in range(world)
    ]
    steps = [[] for _ in range(schedule.max_steps)]
    for batches in per_rank:
        accumulation = len(batches) // schedule.max_steps
        for i, batch in enumerate(batches):
            steps[i // accumulation].append(batch)
    for step, parts in enumerate(steps):
        # Rank by rank, the slices laid end to end are the step's draw: each of its B
        # positions (a warmup draw may repeat a sample) is trained by exactly one rank.
        assert [i for part in parts for i in part] == plan.step_indices(step).tolist()


def test_a_batch_that_does_not_split_across_ranks_is_refused():
    schedule = Schedule.build(warmup_step=1, update_step=1, update_times=1, batch=6, epochs=1)
    with pytest.raises(ValueError, match="multiple of 2 x 2 ranks"):
        ScheduleBatchSampler(SelectionPlan(schedule, 10), 2, world=2)
