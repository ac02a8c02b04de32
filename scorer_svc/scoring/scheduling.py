"""Which queued checkpoint the worker scores next: runs take turns, so a run that queues many
checkpoints cannot hold up another's; within a run, oldest first (the initial checkpoint before
any window, and under a scoring budget each checkpoint's estimates start from the one before).
An async run has at most its initial checkpoint and its newest waiting
(scorer_svc.storage.superseding)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def next_turn(queued: Sequence[tuple[int, int]], last_served: Mapping[int, int]) -> int | None:
    """The checkpoint to score next, from (checkpoint id, run) pairs oldest first, given when
    each run was last served (a growing counter; a run never served goes first). Among runs,
    the one served longest ago; between runs never served, the one whose checkpoint is oldest."""
    oldest: dict[int, int] = {}
    for checkpoint_id, run in queued:
        if run not in oldest or checkpoint_id < oldest[run]:
            oldest[run] = checkpoint_id
    if not oldest:
        return None
    run = min(oldest, key=lambda r: (last_served.get(r, -1), oldest[r]))
    return oldest[run]
