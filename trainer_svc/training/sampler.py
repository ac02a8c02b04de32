"""A batch sampler that yields, step by step, exactly the samples the schedule says.

Indices are pulled lazily: the batch for step S is asked for only when the Trainer fetches
it, and asking for a segment whose selection has not been made yet is an error rather than a
wait (trainer and selection share one thread, so waiting would hang). The Trainer's own
dataloader is not used: accelerate's wrapper reads one batch ahead, which would ask for an
update's samples before its checkpoint is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from trainer_svc.training.schedule import SEED, Schedule, Segment, draw_warmup, training_order

logger = logging.getLogger(__name__)


class SelectionNotReady(RuntimeError):
    """A batch was requested before the selection for its segment was made."""


class SelectionPlan:
    """The sample indices of each segment in the order they are trained (each draw shuffled),
    filled in as updates happen."""

    def __init__(self, schedule: Schedule, n_samples: int, shuffle_seed: int = SEED):
        """shuffle_seed: the seed of each segment's training order (the config's seed)."""
        self.schedule = schedule
        self.n_samples = n_samples
        self.shuffle_seed = shuffle_seed
        self._segments: dict[int, torch.Tensor] = {}

    def set_segment(self, segment: Segment, draw: torch.Tensor) -> None:
        expected = self.schedule.batch * segment.steps
        if draw.numel() != expected:
            raise ValueError(f"segment at step {segment.start} needs {expected} indices")
        self._segments[segment.start] = training_order(draw.to(torch.long), self.shuffle_seed)

    def step_indices(self, step: int) -> torch.Tensor:
        """The B sample indices trained at global step `step`."""
        segment = self.schedule.segment_at(step)
        if segment.start not in self._segments:
            if not segment.is_warmup:
                raise SelectionNotReady(
                    f"step {step} belongs to epoch {segment.epoch} update "
                    f"{segment.update_index}, whose selection has not been made yet"
                )
            count = self.schedule.batch * segment.steps
            self.set_segment(segment, draw_warmup(self.n_samples, count))
        offset = (step - segment.start) * self.schedule.batch
        return self._segments[segment.start][offset : offset + self.schedule.batch]


class ScheduleBatchSampler:
    """This rank's micro-batches of per-device size, gradient_accumulation_steps of them per
    step. Each step's B samples are cut in `world` consecutive slices, one per rank: the ranks'
    samples never overlap and together are the step's samples (one rank: all of them)."""

    def __init__(
        self,
        plan: SelectionPlan,
        micro_batch: int,
        start_step: int = 0,
        *,
        rank: int = 0,
        world: int = 1,
    ):
        if plan.schedule.batch % (micro_batch * world):
            raise ValueError(
                f"B={plan.schedule.batch} is not a multiple of {micro_batch} x {world} ranks"
            )
        self.plan = plan
        self.micro_batch = micro_batch
        self.start_step = start_step
        self.rank = rank
        self.world = world

    @property
    def per_rank(self) -> int:
        return self.plan.schedule.batch // self.world

    @property
    def accumulation(self) -> int:
        return self.per_rank // self.micro_batch

    def __len__(self) -> int:
        # The whole run, also when resuming: the Trainer counts its epoch from this length.
        return self.plan.schedule.max_steps * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.plan.schedule.max_steps):
            for m in range(self.accumulation):
                mine = self.plan.step_indices(step)[
                    self.rank * self.per_rank : (self.rank + 1) * self.per_rank
                ]
                yield mine[m * self.micro_batch : (m + 1) * self.micro_batch].tolist()
