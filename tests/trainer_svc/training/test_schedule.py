"""The schedule's segments and the draws' seeds, against values worked out by hand."""

import torch

from trainer_svc.training.schedule import (
    Schedule,
    draw_permutation,
    draw_warmup,
    draw_weighted,
    update_seed,
)


def sched(**kw):
    args = dict(warmup_step=2, update_step=3, update_times=2, batch=4, epochs=1.0)
    args.update(kw)
    return Schedule.build(**args)


def test_epoch_length_and_max_steps():
    # E = 2 + 3 x 2 = 8; 1.5 epochs -> ceil(12) = 12; 1.1 epochs -> ceil(8.8) = 9
    assert sched().epoch_len == 8
    assert sched(epochs=1.5).max_steps == 12
    assert sched(epochs=1.1).max_steps == 9


def test_updates_fall_at_warmup_plus_multiples_of_update_step_each_epoch():
    updates = sched(epochs=2).updates()
    assert [(u.epoch, u.update_index, u.start) for u in updates] == [
        (0, 1, 2),
        (0, 2, 5),
        (1, 1, 10),
        (1, 2, 13),
    ]


def test_segment_at_maps_each_step():
    s = sched(epochs=2)
    got = [(s.segment_at(i).epoch, s.segment_at(i).update_index) for i in range(16)]
    assert (
        got
        == [(0, 0)] * 2 + [(0, 1)] * 3 + [(0, 2)] * 3 + [(1, 0)] * 2 + [(1, 1)] * 3 + [(1, 2)] * 3
    )


def test_no_update_at_the_last_step_and_warmup_zero_updates_at_zero():
    assert sched(epochs=1).update_at(8) is None
    s = sched(warmup_step=0, epochs=2)
    assert [u.start for u in s.updates()] == [0, 3, 6, 9]


def test_draws_use_the_documented_seeds():
    g = torch.Generator().manual_seed(42)
    assert torch.equal(draw_warmup(10, 6), torch.randint(10, (6,), generator=g))
    g = torch.Generator().manual_seed(42)
    assert torch.equal(draw_permutation(10, 4, 42), torch.randperm(10, generator=g)[:4])
    w = torch.tensor([0.0, 0.5, 0.25, 0.25], dtype=torch.float64)
    g = torch.Generator().manual_seed(47)
    assert torch.equal(draw_weighted(w, 2, 47), torch.multinomial(w, 2, False, generator=g))


def test_weighted_draw_replaces_only_when_more_than_nonzero():
    w = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    assert sorted(draw_weighted(w, 2, 1).tolist()) == [1, 2]  # without replacement
    assert set(draw_weighted(w, 5, 1).tolist()) <= {1, 2}  # 5 > 2 nonzero: with replacement


def test_update_seed():
    assert update_seed(10, first_of_run=True) == 42
    assert update_seed(10, first_of_run=False) == 52
