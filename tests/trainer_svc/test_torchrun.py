"""The trainer under torchrun (two processes, gloo on the CPU), launched as LLaMA-Factory users
do with FORCE_TORCHRUN=1: one run, each update sent once by rank 0, one draw that every rank
trains its own slice of, and the records of rank 0 alone."""

import signal

import pytest
import torch

from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.scorer_process import ScorerProcess, free_port
from delta_loss_devtools.waiting import wait_until
from tests.support.scorer import checkpoints, db_status
from tests.support.trainer import STEPS, TrainerProcess, run_id_of, scorer_keys, write_config
from trainer_svc.training.records import SELECTIONS, TRAINED, read_jsonl
from trainer_svc.training.schedule import Schedule, training_order

pytestmark = pytest.mark.slow

WORLD = 2


def torchrun_env() -> dict[str, str]:
    return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(WORLD), "MASTER_PORT": str(free_port())}


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_two_ranks_train_one_run_on_one_draw(tiny_model, tmp_path, kind):
    data = write_dataset(tmp_path / "data.json", n=64, seed=2)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.yaml", tiny_model, data, out, per_device_train_batch_size=1,
        finetuning_type=kind,
    )  # fmt: skip
    with ScorerProcess(tmp_path / "scorer") as scorer:
        env = torchrun_env()  # once the scorer holds its ports: the rendezvous gets another
        trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "t.log", env=env)
        assert trainer.wait(600) == 0, trainer.log()[-4000:]
        run_id = run_id_of(out)
        sent = checkpoints(scorer, run_id)
    log = trainer.log()
    assert "FORCE_TORCHRUN" in log and "rank 1 of 2" in log, log[-4000:]
    # B = 1 x 2 x 2 ranks; one checkpoint and one selections row per update, from rank 0 only
    assert [c["step"] for c in sent] == STEPS and {c["status"] for c in sent} == {"scored"}, sent
    selections = read_jsonl(out / SELECTIONS)
    assert [r["global_step"] for r in selections] == STEPS, selections
    schedule = Schedule.build(warmup_step=2, update_step=2, update_times=3, batch=4, epochs=1)
    draws = {r["global_step"]: r["sampled_indices"] for r in selections}
    trained = read_jsonl(out / TRAINED)
    assert [r["step"] for r in trained] == list(range(schedule.max_steps)), trained
    for row in trained:
        shares = row["by_rank"]
        assert len(shares) == WORLD and all(len(s) == 2 for s in shares), row
        assert row["indices"] == shares[0] + shares[1]  # rank by rank, B positions once each
        segment = schedule.segment_at(row["step"])
        if not segment.is_warmup:  # the draw in its training order, step by step
            order = training_order(torch.tensor(draws[segment.start]), 42).tolist()
            offset = (row["step"] - segment.start) * schedule.batch
            assert row["indices"] == order[offset : offset + schedule.batch]
    saved = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
    assert (out / saved).is_file()  # the unwrapped model's, as one process saves it


def test_sigterm_stops_every_rank_at_one_step_with_one_checkpoint_and_the_run_resumes(
    tiny_model, tmp_path
):
    data = write_dataset(tmp_path / "data.json", n=64, seed=2)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.yaml", tiny_model, data, out, per_device_train_batch_size=1, save_steps=1000
    )
    with ScorerProcess(tmp_path / "scorer", "--batch-size", "1") as scorer:  # slow scoring
        env = torchrun_env()
        trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "t.log", env=env)
        wait_until(lambda: db_status(scorer, 4)[0] is not None, "update 2 sent", trainer, scorer)
        assert trainer.kill(signal.SIGTERM) == 128 + signal.SIGTERM, trainer.log()[-4000:]
        saved = [p.name for p in out.glob("checkpoint-*")]
        assert len(saved) == 1, saved  # one checkpoint: every rank stopped at the same step
        step = int(saved[0].split("-")[1])
        assert 4 <= step < 8 and trainer.log().count(f"stopped by SIGTERM at step {step}") == 2
        before = read_jsonl(out / SELECTIONS)
        env = torchrun_env()
        resumed = TrainerProcess(
            config, *scorer_keys(scorer), f"resume_from_checkpoint={out / saved[0]}",
            log=tmp_path / "resumed.log", env=env,
        )  # fmt: skip
        assert resumed.wait(600) == 0, resumed.log()[-4000:]
    after = read_jsonl(out / SELECTIONS)
    assert [r["global_step"] for r in after] == STEPS
    assert [r for r in after if r["global_step"] < step] == [
        r for r in before if r["global_step"] < step
    ]
    assert [r["step"] for r in read_jsonl(out / TRAINED)] == list(range(8))
    assert (out / "adapter_model.safetensors").is_file()


def test_a_background_send_refused_under_fail_stops_every_rank_at_one_step(tiny_model, tmp_path):
    """async: the scorer refuses update 1's checkpoint (too large for it) in rank 0's sending
    thread; rank 0 notices at a step end and every rank stops there, with one checkpoint that
    keeps the unsent upload, and exits 1 (no rank hangs in a collective)."""
    data = write_dataset(tmp_path / "data.json", n=64, seed=2)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.yaml", tiny_model, data, out, per_device_train_batch_size=1,
        selection_mode="async", save_steps=1000,
    )  # fmt: skip
    small = {"SCORER_MAX_CHECKPOINT_BYTES": "1024"}
    with ScorerProcess(tmp_path / "scorer", env=small) as scorer:
        trainer = TrainerProcess(
            config, *scorer_keys(scorer), log=tmp_path / "t.log", env=torchrun_env()
        )
        assert trainer.wait(600) != 0, trainer.log()[-4000:]
    log = trainer.log()
    [saved] = out.glob("checkpoint-*")
    step = int(saved.name.split("-")[1])
    assert 2 < step <= 4, log[-4000:]  # stopped at a step end after update 1 (step 2)
    assert log.count("sending the checkpoint step 2 (update 1) failed") >= 1, log[-4000:]
    assert "max_checkpoint_bytes" in log and (saved / "unsent_checkpoint.safetensors").is_file()
    assert "rank 0: " in log  # rank 1 stopped on rank 0's failure, not as if signalled
