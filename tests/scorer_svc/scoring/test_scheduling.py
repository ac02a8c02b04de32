"""Runs take turns at the worker; within a run its checkpoints go oldest first."""

from scorer_svc.scoring.scheduling import next_turn


def test_nothing_queued_gives_nothing():
    assert next_turn([], {}) is None


def test_within_a_run_the_oldest_checkpoint_goes_first():
    assert next_turn([(7, 1), (3, 1), (9, 1)], {1: 5}) == 3


def test_a_run_never_served_goes_before_runs_served_already():
    queued = [(1, 10), (2, 10), (3, 10), (8, 20)]
    assert next_turn(queued, {10: 4}) == 8


def test_runs_never_served_go_in_the_order_their_checkpoints_came():
    assert next_turn([(5, 2), (4, 3)], {}) == 4


def test_runs_take_turns_whoever_queues_more():
    """Run 1 queues six checkpoints before run 2's two: they alternate while both wait."""
    queued = [(i, 1) for i in range(1, 7)] + [(7, 2), (8, 2)]
    served, last, order = set(), {}, []
    for turn in range(1, 9):
        chosen = next_turn([q for q in queued if q[0] not in served], last)
        run = dict(queued)[chosen]
        served.add(chosen)
        last[run] = turn
        order.append(chosen)
    assert order == [1, 7, 2, 8, 3, 4, 5, 6]
