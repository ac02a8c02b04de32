"""The Delta Loss training schedule and its draws: pure functions of steps and seeds.

An epoch is E = warmup_step + update_step x update_times optimizer steps. Steps
[0, warmup_step) of each epoch train on B x warmup_step samples drawn uniformly with
replacement; at step warmup_step + (k-1) x update_step the trainer sends update k's checkpoint
and draws B x update_step samples for the next update_step steps: the run's very first update
a uniform permutation (seed 42), every other one torch.multinomial over the scorer's weights
(seed 42 + global step). A segment trains its draw in an order shuffled by a generator seeded
with the config's seed, as DataFlex's dataloader over the drawn subset does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SEED = 42


@dataclass(frozen=True)
class Segment:
    """Consecutive steps trained on one draw: the warmup (update_index 0) or an update."""

    epoch: int
    update_index: int  # 0 for the warmup
    start: int  # global step of the segment's first optimizer step
    steps: int

    @property
    def is_warmup(self) -> bool:
        return self.update_index == 0


@dataclass(frozen=True)
class Schedule:
    warmup_step: int
    update_step: int
    update_times: int
    batch: int  # B: samples per optimizer step
    max_steps: int

    @classmethod
    def build(
        cls,
        *,
        warmup_step: int,
        update_step: int,
        update_times: int,
        batch: int,
        epochs: float,
        train_step: int = 0,
    ) -> Schedule:
        """max_steps is train_step when it is set (> 0), else ceil(epochs x E)."""
        epoch_len = warmup_step + update_step * update_times
        steps = train_step if train_step > 0 else math.ceil(epochs * epoch_len)
        return cls(warmup_step, update_step, update_times, batch, steps)

    @property
    def epoch_len(self) -> int:
        return self.warmup_step + self.update_step * self.update_times

    def segment_at(self, step: int) -> Segment:
        """The segment that trains global step `step` (0-based)."""
        epoch, pos = divmod(step, self.epoch_len)
        base = epoch * self.epoch_len
        if pos < self.warmup_step:
            return Segment(epoch, 0, base, self.warmup_step)
        k = (pos - self.warmup_step) // self.update_step + 1
        return Segment(
            epoch, k, base + self.warmup_step + (k - 1) * self.update_step, self.update_step
        )

    def update_at(self, step: int) -> Segment | None:
        """The update whose checkpoint is sent after `step` optimizer steps, if any."""
        if step >= self.max_steps:
            return None
        segment = self.segment_at(step)
        if segment.is_warmup or segment.start != step:
            return None
        return segment

    def updates(self) -> list[Segment]:
        return [s for s in map(self.update_at, range(self.max_steps)) if s is not None]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw_warmup(n_samples: int, count: int) -> torch.Tensor:
    """Uniform with replacement: torch.randint(N, (count,), generator seeded 42)."""
    return torch.randint(n_samples, (count,), generator=_generator(SEED))


def draw_permutation(n_samples: int, count: int, seed: int) -> torch.Tensor:
    """The run's first update: torch.randperm(N, generator seeded `seed`)[:count]."""
    return torch.randperm(n_samples, generator=_generator(seed))[:count]


def draw_weighted(weights: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Every update but the run's first: torch.multinomial, with replacement only when count >
    nonzero weights."""
    nonzero = int((weights > 0).sum())
    return torch.multinomial(
        weights, count, replacement=count > nonzero, generator=_generator(seed)
    )


def training_order(draw: torch.Tensor, seed: int) -> torch.Tensor:
    """The order a segment trains its draw in: draw[torch.randperm(len, generator seeded
    `seed`)], the config's seed. So DataFlex's dataloader orders each new subset: accelerate's
    seedable sampler, made afresh for it, seeded with the run's seed at its epoch 0. The draw
    itself is what selections.jsonl records."""
    return draw[torch.randperm(draw.numel(), generator=_generator(seed))]


def update_seed(global_step: int, first_of_run: bool) -> int:
    """42 for the run's first update, 42 + global step for every other draw."""
    return SEED if first_of_run else SEED + global_step
