"""The trainer under torchrun: data-parallel DDP, one run.

Rank 0 alone talks to the scorer (registers, sends each update's checkpoint once, obtains the
weights) and writes the records; it broadcasts each update's draw, so every rank trains the same
selection, each its own slice of every step's B samples (trainer_svc.training.sampler).
Decisions that end training (a signal, a failed update) are taken by all ranks at the same step.
Objects cross as JSON (common.collectives), never pickled. Without torchrun it is one rank of
one and none of this costs anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from common.collectives import any_rank, broadcast_json, gather_json, start_group
from common.launch import Launch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collectives move tensors

    @classmethod
    def start(cls, launch: Launch, timeout_seconds: float) -> Ranks:
        """The process group torchrun's variables describe (NCCL on GPUs, gloo on CPUs); the
        Trainer's accelerate uses the same group. One rank of one without torchrun."""
        if launch.world == 1:
            return cls()
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", launch.local_rank) if cuda else torch.device("cpu")
        start_group(device, timeout_seconds)
        ranks = cls(dist.get_rank(), dist.get_world_size(), device)
        logger.info("rank %d of %d on %s", ranks.rank, ranks.world, device)
        return ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, obj: Any) -> Any:
        """Rank 0's obj on every rank (others pass None)."""
        return obj if self.world == 1 else broadcast_json(obj, device=self.device)

    def any(self, flag: bool) -> bool:
        """Whether any rank has flag set: the same answer on every rank."""
        return flag if self.world == 1 else any_rank(flag, device=self.device)

    def close(self) -> None:
        """Leave the process group. A gloo rank that exits with the group still up can abort
        at interpreter shutdown ("terminate called without an active exception")."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def one_gpu(self, args: Any) -> None:
        """Train on one GPU in a process torchrun did not start, however many are visible:
        transformers' Trainer would otherwise spread a lone process over all of them with
        nn.DataParallel (and a scorer on another GPU would meet the trainer there). The GPU is
        cuda:0, the first CUDA_VISIBLE_DEVICES names. args: the run's TrainingArguments."""
        if self.world > 1 or args.n_gpu <= 1:  # n_gpu: how many the Trainer would use
            return
        logger.warning(
            "%d GPUs visible and no torchrun: training on %s alone; run under torchrun "
            "--nproc-per-node %d to train on all of them, or set CUDA_VISIBLE_DEVICES to the "
            "one to use", args.n_gpu, args.device, args.n_gpu,
        )  # fmt: skip
        args._n_gpu = 1

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's obj, in rank order, on rank 0; None on the others."""
        if self.world == 1:
            return [obj]
        return gather_json(obj, device=self.device)
