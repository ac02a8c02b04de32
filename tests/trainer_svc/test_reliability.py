"""Faults during a real run (`python -m trainer_svc train` against `python -m scorer_svc serve`):
the scorer killed while it scores, the trainer killed or stopped by SIGTERM and resumed. Each
run ends with the same selections (and stored losses) as an uninterrupted run with the seed.
And the scorer restarted on an empty database: the trainer says so, saves and stops.

One config throughout (tests/support/trainer.py with RUN_KEYS): 128 samples, B = 4, 8 steps,
updates at steps 2, 4 and 6, LoRA with dropout (so the trainer's RNG matters), checkpoints
every 2 steps.
"""

import json
import re
import signal

import pytest
import torch
from safetensors.torch import load_file

from delta_loss_devtools.scorer_process import ScorerProcess
from delta_loss_devtools.waiting import wait_until
from tests.support.data import write_samples
from tests.support.scorer import checkpoints, db_status, stored_losses
from tests.support.trainer import (
    STEPS,
    TrainerProcess,
    assert_close,
    sampled,
    scorer_keys,
    train,
)
from tests.support.trainer import write_config as _write_config
from trainer_svc.training.records import read_jsonl

pytestmark = pytest.mark.slow

N = 128
RUN = "rel-run"
ADAPTER = "adapter_model.safetensors"
SLOW = ("--batch-size", "1")  # one sample per forward pass: scoring takes long enough to hit
# LoRA with dropout (the trainer's RNG matters: a resume must restore it), a checkpoint every
# 2 steps, and a fixed run id.
RUN_KEYS = dict(
    run_id=RUN, lora_rank=8, lora_alpha=16, lora_dropout=0.1, learning_rate=5e-3, save_steps=2
)


def write_config(path, tiny_model, data, out, **over):
    return _write_config(path, tiny_model, data, out, **{**RUN_KEYS, **over})


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    return tiny_model, write_samples(root / "data.json", N, seed=3), root


@pytest.fixture(scope="module")
def reference(files):
    """An uninterrupted run: its selections, trained samples and stored losses."""
    tiny_model, data, root = files
    scorer = ScorerProcess(root / "ref-scorer").start()
    try:
        out = root / "ref-out"
        config = write_config(root / "ref.yaml", tiny_model, data, out)
        train(config, *scorer_keys(scorer), log=root / "ref.log")
        losses = stored_losses(scorer, RUN)
    finally:
        scorer.stop()
    return {
        "selections": sampled(out),
        "trained": read_jsonl(out / "trained_samples.jsonl"),
        "losses": losses,
        "adapter": load_file(out / ADAPTER),
    }


def same_adapter(out, reference) -> None:
    """The final LoRA tensors equal the uninterrupted run's, bit for bit."""
    adapter = load_file(out / ADAPTER)
    assert adapter.keys() == reference["adapter"].keys()
    for name, tensor in adapter.items():
        assert torch.equal(tensor, reference["adapter"][name]), name


def scored_once(scorer: ScorerProcess) -> None:
    """/checkpoints lists each step once, scored; the log says each was scored once."""
    rows = checkpoints(scorer, RUN)
    assert [(r["step"], r["status"]) for r in rows] == [(s, "scored") for s in STEPS]
    scored = re.findall(rf"scored run {RUN} step (\d+) ", scorer.log())
    assert sorted(int(s) for s in scored) == STEPS


def test_same_config_twice_gives_the_same_run(files, reference, tmp_path):
    tiny_model, data, _ = files
    scorer = ScorerProcess(tmp_path / "scorer").start()
    try:
        out = tmp_path / "out"
        train(
            write_config(tmp_path / "c.yaml", tiny_model, data, out),
            *scorer_keys(scorer),
            log=tmp_path / "trainer.log",
        )
        assert sampled(out) == reference["selections"]
        assert read_jsonl(out / "trained_samples.jsonl") == reference["trained"]
        assert stored_losses(scorer, RUN) == reference["losses"]  # bit for bit
        same_adapter(out, reference)
    finally:
        scorer.stop()


def test_scorer_killed_while_scoring_is_restarted_and_the_run_finishes(files, reference, tmp_path):
    """SIGKILL while checkpoint 2 (step 4) is being scored; the restarted scorer (same data
    directory and ports, default batch size) re-scores it and the waiting trainer goes on."""
    tiny_model, data, _ = files
    scorer = ScorerProcess(tmp_path / "scorer", *SLOW).start()
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_model, data, out)
    trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "trainer.log")
    restarted = None
    try:
        wait_until(lambda: db_status(scorer, 4)[0] == "scoring", "step 4 scoring", trainer, scorer)
        assert scorer.stop(signal.SIGKILL) == -signal.SIGKILL
        assert db_status(scorer, 4)[0] == "scoring"  # cut off mid-way
        # the trainer polls a scorer that is not there, and says so
        wait_until(lambda: "cannot reach" in trainer.log(), "the trainer missing it", trainer)
        restarted = scorer.again().start()
        assert trainer.wait() == 0, trainer.log()[-4000:]
        log = trainer.log()
        assert "cannot reach" in log and "checkpoint step 4" in log  # it waited, and said so
        assert sampled(out) == reference["selections"]
        assert read_jsonl(out / "trained_samples.jsonl") == reference["trained"]
        worst = assert_close(stored_losses(restarted, RUN), reference["losses"], 1e-5)
        print(f"max loss difference to the uninterrupted run: {worst:.2e}")
        same_adapter(out, reference)
        rows = checkpoints(restarted, RUN)
        assert [(r["step"], r["status"]) for r in rows] == [(s, "scored") for s in STEPS]
    finally:
        if trainer.proc.poll() is None:
            trainer.kill()
        (restarted or scorer).stop()


def test_trainer_killed_after_an_update_resumes_to_the_same_selections(files, reference, tmp_path):
    """SIGKILL while the trainer waits for update 3's weights (checkpoint-4 on disk); resumed
    from checkpoint-4, it sends steps 4 and 6 again: the scorer knows both, scores neither again.
    """
    tiny_model, data, _ = files
    scorer = ScorerProcess(tmp_path / "scorer", *SLOW).start()
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_model, data, out)
    try:
        trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "first.log")
        wait_until(
            lambda: db_status(scorer, 6)[0] is not None,
            "checkpoint 6 at the scorer",
            trainer,
            scorer,
        )
        assert trainer.kill() == -signal.SIGKILL
        assert (out / "checkpoint-4" / "trainer_state.json").is_file()
        assert not (out / "checkpoint-6").exists()
        assert [s for s, _ in sampled(out)] == [2, 4]  # update 3 was not drawn
        log = train(
            config,
            *scorer_keys(scorer),
            f"resume_from_checkpoint={out / 'checkpoint-4'}",
            log=tmp_path / "resumed.log",
        )
        assert "resuming at step 4 with 1 earlier update(s)" in log
        assert re.findall(r"scorer (\w+) checkpoint step (\d+)", log) == [
            ("duplicate", "4"),
            ("duplicate", "6"),
        ]
        assert sampled(out) == reference["selections"]
        assert read_jsonl(out / "trained_samples.jsonl") == reference["trained"]
        scored_once(scorer)
        assert_close(stored_losses(scorer, RUN), reference["losses"], 1e-5)
        same_adapter(out, reference)  # the resumed steps trained as the uninterrupted ones
    finally:
        scorer.stop()


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(files, reference, tmp_path):
    """SIGTERM while the trainer waits for update 2's weights: it finishes that step, saves
    checkpoint-4 (no other checkpoint: save_steps is large) and exits 143 (128 + SIGTERM, for
    a scheduler to requeue it) with a message."""
    tiny_model, data, _ = files
    scorer = ScorerProcess(tmp_path / "scorer", *SLOW).start()
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_model, data, out, save_steps=1000)
    try:
        trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "first.log")
        wait_until(
            lambda: db_status(scorer, 4)[0] is not None,
            "checkpoint 4 at the scorer",
            trainer,
            scorer,
        )
        assert trainer.kill(signal.SIGTERM) == 128 + signal.SIGTERM, trainer.log()[-4000:]
        saved = [p.name for p in out.glob("checkpoint-*")]
        assert len(saved) == 1, saved
        step = int(saved[0].split("-")[1])
        assert 4 <= step < 8
        state = json.loads((out / saved[0] / "trainer_state.json").read_text())
        assert state["global_step"] == step
        assert f"stopped by SIGTERM at step {step}" in trainer.log()
        assert not (out / ADAPTER).exists()  # no "finished" model
        train(
            config,
            *scorer_keys(scorer),
            f"resume_from_checkpoint={out / saved[0]}",
            log=tmp_path / "resumed.log",
        )
        assert sampled(out) == reference["selections"]
        assert read_jsonl(out / "trained_samples.jsonl") == reference["trained"]
        scored_once(scorer)
        # checkpoint 6 was first sent by the resumed run: its losses are the resumed model's
        assert_close(stored_losses(scorer, RUN), reference["losses"], 1e-5)
        same_adapter(out, reference)
    finally:
        scorer.stop()


def test_a_scorer_restarted_on_an_empty_database_stops_the_trainer_with_a_checkpoint(
    files, tmp_path
):
    """The scorer SIGKILLed while it scores update 1 (step 2), restarted at the same addresses
    on a new database: the trainer's run is unknown there. It says the database was lost and
    how to restart selection, saves checkpoint-2 and exits 1 naming it."""
    tiny_model, data, _ = files
    scorer = ScorerProcess(tmp_path / "scorer", *SLOW).start()
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_model, data, out, save_steps=1000)
    trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "trainer.log")
    restarted = scorer.again("--database-url", f"sqlite:///{tmp_path / 'new.db'}")
    try:
        wait_until(lambda: db_status(scorer, 2)[0] == "scoring", "step 2 scoring", trainer, scorer)
        assert scorer.stop(signal.SIGKILL) == -signal.SIGKILL
        restarted.start()
        assert trainer.wait() == 1, trainer.log()[-4000:]
        log = trainer.log()
        (stop,) = [line for line in log.splitlines() if "stopped:" in line]
        assert "the scorer no longer knows run rel-run" in stop
        assert "its database was lost or replaced" in stop
        assert "To restart selection, resume from the last checkpoint" in stop
        saved = out / "checkpoint-2"
        assert f"the state at step 2 is saved in {saved}" in stop
        assert f"resume_from_checkpoint={saved}" in stop and "Traceback" not in log
        assert [p.name for p in out.glob("checkpoint-*")] == [saved.name]
        assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == 2
        assert sampled(out) == []  # update 1 was not drawn: the resumed run sends it again
    finally:
        if trainer.proc.poll() is None:
            trainer.kill()
        scorer.stop()
        restarted.stop()
