"""Hooks into transformers' Trainer: a scheduled dataloader, a record of trained samples, and
a callback that runs each update when its step is reached. Trainer's loop is used as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from trainer_svc.data import INDEX_KEY
from trainer_svc.records import TrainedSamples
from trainer_svc.sampler import ScheduleBatchSampler
from trainer_svc.schedule import Schedule
from trainer_svc.updates import UpdateCoordinator

logger = logging.getLogger(__name__)


class ScheduledTrainer(Trainer):
    """Trains each step on the samples the schedule gives, and records them."""

    def __init__(
        self,
        *args: Any,
        batch_sampler: ScheduleBatchSampler,
        trained: TrainedSamples,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.batch_sampler = batch_sampler
        self.trained = trained

    def get_train_dataloader(self) -> DataLoader:
        # A plain DataLoader in this process: nothing reads batches ahead of the step that
        # trains them (accelerate's wrapper would, and so would workers).
        return DataLoader(
            self.train_dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=self.data_collator,
            num_workers=0,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index = inputs.pop(INDEX_KEY, None)
        if index is not None and model.training:
            self.trained.add(self.state.global_step, index.tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class SelectionCallback(TrainerCallback):
    """Runs update k when global_step reaches warmup_step + (k-1) x update_step."""

    def __init__(
        self,
        schedule: Schedule,
        coordinator: UpdateCoordinator,
        tensors: Callable[[], dict[str, torch.Tensor]],
        trained: TrainedSamples,
    ):
        self.schedule = schedule
        self.coordinator = coordinator
        self.tensors = tensors
        self.trained = trained

    def _maybe_update(self, step: int) -> None:
        segment = self.schedule.update_at(step)
        if segment is not None:
            self.coordinator.run_update(segment, self.tensors)

    def on_train_begin(self, args, state, control, **kwargs):
        self._maybe_update(state.global_step)  # warmup_step 0: update 1 before any step

    def on_step_end(self, args, state, control, **kwargs):
        self.trained.flush()
        self._maybe_update(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trained.flush()
