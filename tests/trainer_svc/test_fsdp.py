"""FSDP for full fine-tuning under torchrun (two processes, gloo on the CPU), against DDP on the
same config and real scorers: the same draws, the scorer's losses and the trained weights within
float tolerance; an FSDP run stopped by SIGTERM after its first update resumes to the draws of
the run that was not stopped."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.api.client import ScorerApi
from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.scorer_process import ScorerProcess, free_port
from delta_loss_devtools.waiting import wait_until
from tests.support.scorer import db_status
from tests.support.trainer import (
    STEPS,
    TrainerProcess,
    assert_close,
    run_id_of,
    sampled,
    scorer_keys,
    write_config,
)
from trainer_svc.training.records import SELECTIONS, read_jsonl

pytestmark = pytest.mark.slow

WORLD = 2
FSDP = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"reshard_after_forward": True}}
TOLERANCE = 1e-5  # float32 on the CPU: sums in another order, nothing more
GATHERED = "the full state dict gathered to rank 0"


@dataclass(frozen=True)
class Run:
    out: Path
    run_id: str
    log: str
    losses: dict[int, list[float | None]]  # the scorer's, by update step


def torchrun_env() -> dict[str, str]:
    return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(WORLD), "MASTER_PORT": str(free_port())}


def config(folder: Path, tiny_model: Path, data: Path, name: str, **over) -> Path:
    """The full fine-tuning run both parallelisms train: B = 1 x 2 x 2 ranks, 8 steps."""
    return write_config(
        folder / f"{name}.yaml", tiny_model, data, folder / name, finetuning_type="full",
        per_device_train_batch_size=1, **over,
    )  # fmt: skip


def train(scorer: ScorerProcess, path: Path, out: Path, log: Path) -> Run:
    trainer = TrainerProcess(path, *scorer_keys(scorer), log=log, env=torchrun_env())
    assert trainer.wait(600) == 0, trainer.log()[-4000:]
    run_id = run_id_of(out)
    with ScorerApi(scorer.base_url) as api:
        losses = {step: api.all_losses(run_id, step=step) for step in STEPS}
    return Run(out, run_id, trainer.log(), losses)


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Run]:
    """One DDP run and one FSDP run of the same config, one after the other, on one scorer."""
    folder = tmp_path_factory.mktemp("fsdp")
    data = write_dataset(folder / "data.json", n=64, seed=2)
    done = {}
    with ScorerProcess(folder / "scorer") as scorer:
        for name, over in (("ddp", {}), ("fsdp", FSDP)):
            path = config(folder, tiny_model, data, name, **over)
            done[name] = train(scorer, path, folder / name, folder / f"{name}.log")
    return done


def weights(out: Path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(out).state_dict())


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_fsdp_draws_scores_and_trains_as_ddp_does(runs, tiny_model):
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    # FSDP sharded the model: rank 0 gathered each update's checkpoint (rank 1 got nothing to
    # log); DDP gathered none
    assert fsdp.log.count(GATHERED) == len(STEPS) and GATHERED not in ddp.log, fsdp.log[-4000:]
    assert sampled(fsdp.out) == sampled(ddp.out)  # the same draws, update by update
    worst_loss = assert_close(fsdp.losses, ddp.losses, TOLERANCE)
    trained = weights(fsdp.out)
    worst_weight = max_difference(trained, weights(ddp.out))
    assert worst_weight <= TOLERANCE, f"the trained weights differ by up to {worst_weight}"
    assert max_difference(trained, weights(tiny_model)) > 1e-3  # and training changed them
    print(f"FSDP against DDP: losses within {worst_loss:.3g}, weights within {worst_weight:.3g}")


def test_an_fsdp_run_stopped_by_sigterm_resumes_to_the_draws_of_one_not_stopped(
    runs, tiny_model, tmp_path
):
    data = write_dataset(tmp_path / "data.json", n=64, seed=2)
    path = config(tmp_path, tiny_model, data, "out", **FSDP)
    out = tmp_path / "out"
    with ScorerProcess(tmp_path / "scorer", "--batch-size", "1") as scorer:  # slow scoring
        trainer = TrainerProcess(path, *scorer_keys(scorer), log=tmp_path / "t.log",
                                 env=torchrun_env())  # fmt: skip
        wait_until(lambda: db_status(scorer, 4)[0] is not None, "update 2 sent", trainer, scorer)
        assert trainer.kill(signal.SIGTERM) == 128 + signal.SIGTERM, trainer.log()[-4000:]
        [saved] = out.glob("checkpoint-*")  # one: every rank stopped at the same step
        step = int(saved.name.split("-")[1])
        assert 4 <= step < 8, trainer.log()[-4000:]
        assert (saved / "pytorch_model_fsdp.bin").is_file()  # FSDP's own, for the resume
        before = read_jsonl(out / SELECTIONS)
        resumed = TrainerProcess(
            path, *scorer_keys(scorer), f"resume_from_checkpoint={saved}",
            log=tmp_path / "resumed.log", env=torchrun_env(),
        )  # fmt: skip
        assert resumed.wait(600) == 0, resumed.log()[-4000:]
    after = read_jsonl(out / SELECTIONS)
    assert [r for r in after if r["global_step"] < step] == [
        r for r in before if r["global_step"] < step
    ]
    assert sampled(out) == sampled(runs["fsdp"].out)  # the draws left, as if never stopped
    worst = max_difference(weights(out), weights(runs["fsdp"].out))
    assert worst <= TOLERANCE, f"the resumed run's weights differ by up to {worst}"
    print(f"stopped at step {step}, resumed: weights within {worst:.3g} of the run not stopped")
