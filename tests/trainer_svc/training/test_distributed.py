"""A lone trainer process (no torchrun) trains on one GPU, never nn.DataParallel over all."""

import logging

import torch
from transformers import TrainingArguments

from trainer_svc.training.distributed import Ranks


class FourGpus:
    """TrainingArguments' device and GPU count as transformers sets them on a host with four
    visible GPUs and no torchrun (a narrow stand-in: there is no GPU here)."""

    device = torch.device("cuda:0")

    def __init__(self) -> None:
        self._n_gpu = 4

    @property
    def n_gpu(self) -> int:
        return self._n_gpu


def test_a_lone_process_on_four_gpus_trains_on_the_first_and_says_so(caplog):
    args = FourGpus()
    with caplog.at_level(logging.WARNING, logger="trainer_svc.training.distributed"):
        Ranks().one_gpu(args)
    assert args.n_gpu == 1  # the Trainer wraps the model in DataParallel when this is above 1
    assert "4 GPUs visible and no torchrun: training on cuda:0 alone" in caplog.text
    assert "torchrun --nproc-per-node 4" in caplog.text


def test_under_torchrun_the_ranks_placement_is_left_to_torchrun():
    args = FourGpus()
    Ranks(rank=1, world=4, device=torch.device("cuda:1")).one_gpu(args)
    assert args.n_gpu == 4  # untouched: DDP gives each rank its own GPU (cuda:LOCAL_RANK)


def test_on_the_cpu_nothing_changes(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    Ranks().one_gpu(args)
    assert args.n_gpu == 0 and args.device.type == "cpu"
