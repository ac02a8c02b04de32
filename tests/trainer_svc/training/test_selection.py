"""Delta Loss selection added to a plain transformers Trainer built by the user."""

import json
import os
import signal

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from common.wire.errors import RunMismatch
from delta_loss_devtools.fake_scorer import FakeScorer
from tests.support.trainer import FailingAtStep
from trainer_svc.config.train_config import ConfigError
from trainer_svc.scorer.retry import ScorerFailure
from trainer_svc.training.records import read_jsonl
from trainer_svc.training.schedule import training_order
from trainer_svc.training.selection import DeltaLossSelection

SELECTION = dict(
    template="plain", cutoff_len=128, warmup_step=2, update_step=2, update_times=3,
    scorer_wait_seconds=120,
)  # fmt: skip


def users_model(tiny_model, **lora):
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    for key, value in lora.items():
        setattr(config, key, value)
    return get_peft_model(base, config)


def users_args(out, **over):
    keys = dict(
        output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        num_train_epochs=1.5, learning_rate=1e-3, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, remove_unused_columns=False,
    )  # fmt: skip
    return TrainingArguments(**{**keys, **over})


def train_with(
    tiny_model, demo_file, out, scorer=None, *, resume=None, args=None, callbacks=(),
    **selection_keys,
):  # fmt: skip
    model = users_model(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    args = users_args(out, **(args or {}))
    selection = DeltaLossSelection(
        {"dataset": str(demo_file), **SELECTION, **selection_keys},
        model=model, tokenizer=tokenizer, args=args, scorer=scorer,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=selection.train_dataset,
        data_collator=selection.data_collator, callbacks=list(callbacks),
    )  # fmt: skip
    before = {n: t.clone() for n, t in model.named_parameters() if t.requires_grad}
    selection.attach(trainer)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        selection.close()
    return selection, trainer, before


def check_trained_the_schedule(out, selection):
    trained = {row["step"]: row["indices"] for row in read_jsonl(out / "trained_samples.jsonl")}
    assert sorted(trained) == list(range(selection.max_steps))
    rows = read_jsonl(out / "selections.jsonl")
    for row in rows:
        s = row["global_step"]
        drawn = torch.tensor(row["sampled_indices"])
        assert trained[s] + trained[s + 1] == training_order(drawn, 42).tolist()
    return rows


@pytest.mark.slow  # trains a model (in-process)
def test_a_users_trainer_trains_the_scheduled_samples(tiny_model, demo_file, tmp_path):
    out = tmp_path / "out"
    scorer = FakeScorer(32)
    selection, trainer, before = train_with(tiny_model, demo_file, out, scorer=scorer)
    # E = 2 + 2 x 3 = 8, 1.5 epochs = 12 steps; updates at 2, 4, 6 and 10 (epoch 2)
    assert [(c.step, c.update_index) for c in scorer.checkpoints] == [
        (2, 1), (4, 2), (6, 3), (10, 1),
    ]  # fmt: skip
    assert trainer.state.global_step == 12 and scorer.closed
    assert scorer.ended == [("finished", "trained 12 steps")]
    hello = scorer.hellos[0]
    assert hello.lora is not None and hello.lora.r == 4 and hello.n_samples == 32
    # peft resolved all-linear to module names: the scorer builds LoRA on the same ones
    assert "q_proj" in hello.lora.target_modules
    rows = check_trained_the_schedule(out, selection)
    assert [r["draw"] for r in rows] == ["randperm", "multinomial", "multinomial", "multinomial"]
    logged = [r for r in trainer.state.log_history if "selection/seconds_waited" in r]
    assert [r["step"] for r in logged] == [2, 4, 6, 10]  # each update's figures, in the log
    moved = selection.callback.updates.tensors()
    assert any(not torch.equal(moved[n], before[n]) for n in before)


@pytest.mark.slow  # trains a model against a scorer process
def test_a_users_trainer_against_the_real_scorer(tiny_model, demo_file, scorer, tmp_path):
    out = tmp_path / "out"
    keys = dict(scorer_zmq_url=scorer.zmq_url, scorer_http_url=scorer.base_url)
    selection, trainer, _ = train_with(tiny_model, demo_file, out, **keys)
    rows = check_trained_the_schedule(out, selection)
    # every update's weights came from the scorer, for that update's own checkpoint
    assert [(r["global_step"], r["weights_step"], r["source"]) for r in rows] == [
        (2, 2, "scorer"), (4, 4, "scorer"), (6, 6, "scorer"), (10, 10, "scorer"),
    ]  # fmt: skip
    run = httpx.get(f"{scorer.base_url}/v1/runs/{selection.run_id}").json()
    assert (run["status"], run["end_detail"]) == ("finished", "trained 12 steps")


def test_keys_that_belong_to_the_training_arguments_are_refused(tiny_model, demo_file, tmp_path):
    model = users_model(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with pytest.raises(ConfigError) as info:
        DeltaLossSelection(
            {"dataset": str(demo_file), **SELECTION, "learning_rate": 1.0},
            model=model, tokenizer=tokenizer, args=users_args(tmp_path), scorer=FakeScorer(32),
        )  # fmt: skip
    assert "TrainingArguments" in info.value.problems["learning_rate"]


@pytest.mark.parametrize(
    "option",
    [{"use_rslora": True}, {"alpha_pattern": {"q_proj": 16}}, {"layers_to_transform": [0]}],
)
def test_lora_options_the_scorer_cannot_reproduce_are_refused(
    tiny_model, demo_file, tmp_path, option
):
    model = users_model(tiny_model, **option)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with pytest.raises(ConfigError) as info:
        DeltaLossSelection(
            {"dataset": str(demo_file), **SELECTION},
            model=model, tokenizer=tokenizer, args=users_args(tmp_path), scorer=FakeScorer(32),
        )  # fmt: skip
    assert f"does not reproduce: {next(iter(option))}" in info.value.problems["model"]


def test_the_scorer_is_told_the_models_attention_and_code_trust(tiny_model, demo_file, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    selection = DeltaLossSelection(
        {"dataset": str(demo_file), **SELECTION, "trust_remote_code": True},
        model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model),
        args=users_args(tmp_path), scorer=FakeScorer(32),
    )  # fmt: skip
    try:
        hello = selection.hello
        assert (hello.attn_implementation, hello.trust_remote_code) == ("eager", True)
        assert hello.lora.target_modules == ["q_proj", "v_proj"] and hello.quantization_bit is None
    finally:
        selection.close()


class RefusingRegistration(FakeScorer):
    def register(self, hello):
        raise RunMismatch("the scorer holds this run id with another dataset")


def test_a_refused_registration_stops_the_users_training(tiny_model, demo_file, tmp_path):
    with pytest.raises(ScorerFailure, match="registering run .* another dataset"):
        train_with(tiny_model, demo_file, tmp_path / "out", scorer=RefusingRegistration(32))


def test_a_trainer_on_another_dataset_is_refused(tiny_model, demo_file, tmp_path):
    model = users_model(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    args = users_args(tmp_path)
    selection = DeltaLossSelection(
        {"dataset": str(demo_file), **SELECTION},
        model=model, tokenizer=tokenizer, args=args, scorer=FakeScorer(32),
    )  # fmt: skip
    try:
        trainer = Trainer(model=model, args=args, train_dataset=list(selection.train_dataset))
        with pytest.raises(ConfigError, match="selection.train_dataset"):
            selection.attach(trainer)
    finally:
        selection.close()


def test_a_users_bfloat16_model_trained_in_full_is_warned_of(
    tiny_bf16_model, demo_file, tmp_path, caplog
):
    """The user's model is theirs to upcast; the selection says when it trains in bfloat16."""
    model = AutoModelForCausalLM.from_pretrained(tiny_bf16_model)
    with caplog.at_level("WARNING", logger="trainer_svc.training.selection"):
        selection = DeltaLossSelection(
            {"dataset": str(demo_file), **SELECTION},
            model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_bf16_model),
            args=users_args(tmp_path), scorer=FakeScorer(32),
        )  # fmt: skip
    selection.close()
    assert "from bfloat16 train without float32 master weights" in caplog.text


@pytest.mark.slow  # trains a model (in-process)
def test_a_users_upcast_model_sends_its_checkpoints_as_stored(tiny_bf16_model, demo_file, tmp_path):
    """Upcast as the warning says, a full model's float32 master weights travel in bfloat16,
    the dtype it was stored in: half the bytes against max_checkpoint_bytes."""
    model = AutoModelForCausalLM.from_pretrained(tiny_bf16_model)
    for p in model.parameters():
        p.data = p.data.float()
    scorer = FakeScorer(32)
    args = users_args(tmp_path / "out", num_train_epochs=0.5)
    selection = DeltaLossSelection(
        {"dataset": str(demo_file), **SELECTION},
        model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_bf16_model), args=args,
        scorer=scorer,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=selection.train_dataset,
        data_collator=selection.data_collator,
    )  # fmt: skip
    selection.attach(trainer)
    try:
        trainer.train()
    finally:
        selection.close()
    sent = scorer.checkpoints[0].tensors
    assert set(sent) == set(model.state_dict())
    assert {t.dtype for t in sent.values()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # trained as float32


@pytest.mark.slow  # trains a model three times (in-process)
def test_a_users_trainer_resumes_the_run_from_a_checkpoint(tiny_model, demo_file, tmp_path):
    out = tmp_path / "out"
    saving = dict(save_strategy="steps", save_steps=3)
    first = FakeScorer(32)
    train_with(tiny_model, demo_file, out, scorer=first, args=saving)
    before = read_jsonl(out / "trained_samples.jsonl")
    selections = [r["sampled_indices"] for r in read_jsonl(out / "selections.jsonl")]
    assert json.loads((out / "run.json").read_text())["run_id"] == first.hellos[0].run_id

    scorer = FakeScorer(32)
    selection, trainer, _ = train_with(
        tiny_model, demo_file, out, scorer=scorer, resume=str(out / "checkpoint-6"), args=saving
    )
    # updates from step 6 on are sent again (the scorer answers `duplicate`) and drawn again
    assert [c.step for c in scorer.checkpoints] == [6, 10] and trainer.state.global_step == 12
    (hello,), (again,) = first.hellos, scorer.hellos
    assert (again.run_id, again.run_token) == (hello.run_id, hello.run_token)  # the same run
    assert read_jsonl(out / "trained_samples.jsonl") == before
    assert [r["sampled_indices"] for r in read_jsonl(out / "selections.jsonl")] == selections
    assert scorer.ended == [("finished", "trained 12 steps")]


@pytest.mark.slow  # trains a model twice (in-process)
def test_a_failed_update_names_its_checkpoint_and_the_last_one_resumes(
    tiny_model, demo_file, tmp_path
):
    out = tmp_path / "out"
    failing = FailingAtStep(32, 4)
    with pytest.raises(ScorerFailure) as info:
        train_with(tiny_model, demo_file, out, scorer=failing)
    saved = out / "checkpoint-4"
    assert f"the state at step 4 is saved in {saved}: rerun with resume_from_checkpoint" in str(
        info.value
    )
    assert [status for status, _ in failing.ended] == ["failed"] and failing.closed
    assert [r["global_step"] for r in read_jsonl(out / "selections.jsonl")] == [2]

    scorer = FakeScorer(32)
    train_with(tiny_model, demo_file, out, scorer=scorer, resume=True)  # the last checkpoint
    assert [c.step for c in scorer.checkpoints] == [4, 6, 10]  # the failed update first
    assert [r["global_step"] for r in read_jsonl(out / "selections.jsonl")] == [2, 4, 6, 10]
    assert [r["step"] for r in read_jsonl(out / "trained_samples.jsonl")] == list(range(12))


class SigtermAt(TrainerCallback):
    """SIGTERM to this process as step `step` ends (a scheduler's preemption)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow  # trains a model twice (in-process)
def test_sigterm_stops_a_users_trainer_with_a_checkpoint_that_resumes(
    tiny_model, demo_file, tmp_path
):
    out = tmp_path / "out"
    first = FakeScorer(32)
    handler = signal.getsignal(signal.SIGTERM)
    selection, trainer, _ = train_with(
        tiny_model, demo_file, out, scorer=first, callbacks=[SigtermAt(5)]
    )
    assert signal.getsignal(signal.SIGTERM) == handler  # handled while training only
    # the step the signal arrived in is finished and saved; the run has not ended
    assert selection.stopped and trainer.state.global_step == 5
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-5"]
    assert selection.stop_checkpoint == out / "checkpoint-5" and first.ended == []

    scorer = FakeScorer(32)
    selection, trainer, _ = train_with(
        tiny_model, demo_file, out, scorer=scorer, resume=str(out / "checkpoint-5")
    )
    assert not selection.stopped and trainer.state.global_step == 12
    assert [c.step for c in scorer.checkpoints] == [6, 10]
    assert [r["global_step"] for r in read_jsonl(out / "selections.jsonl")] == [2, 4, 6, 10]
    assert [r["step"] for r in read_jsonl(out / "trained_samples.jsonl")] == list(range(12))
    assert scorer.ended == [("finished", "trained 12 steps")]
