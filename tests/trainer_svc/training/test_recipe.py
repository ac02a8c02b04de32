"""The whole recipe on a tiny model with a fake scorer: what it sends, trains and saves."""

import json
from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from common.wire.errors import RunMismatch, ScorerUnavailable
from common.wire.protocol import Hello
from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.fake_scorer import FakeScorer
from tests.support.trainer import FailingAtStep, trainer_config
from trainer_svc.config.train_config import parse_config
from trainer_svc.scorer.outage import PROBE_SECONDS
from trainer_svc.scorer.retry import ScorerFailure
from trainer_svc.training.recipe import run
from trainer_svc.training.records import read_jsonl
from trainer_svc.training.schedule import draw_warmup, training_order

pytestmark = pytest.mark.slow  # trains a model (in-process, fake scorer)


def config(tiny_model, demo_file, out, **over):
    """The support config, plain template, 1.5 epochs (the second epoch's first update too)."""
    keys = dict(template="plain", cutoff_len=128, num_train_epochs=1.5, plot_loss=True)
    raw = trainer_config(tiny_model, demo_file, out, **{**keys, **over})
    return parse_config(raw)


def train(tiny_model, demo_file, out, **over):
    scorer = FakeScorer(32)
    recipe = run(config(tiny_model, demo_file, out, **over), scorer=scorer)
    assert scorer.closed  # cleanup closes the scorer
    return recipe, scorer


def test_lora_run_trains_exactly_the_scheduled_samples(tiny_model, demo_file, tmp_path):
    out = tmp_path / "out"
    recipe, scorer = train(tiny_model, demo_file, out)
    # E = 2 + 2 x 3 = 8, 1.5 epochs = 12 steps; updates at 2, 4, 6 and 10 (epoch 2)
    assert [(c.step, c.update_index) for c in scorer.checkpoints] == [
        (2, 1),
        (4, 2),
        (6, 3),
        (10, 1),
    ]
    names = {n for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert set(scorer.checkpoints[0].tensors) == names and all("lora_" in n for n in names)
    hello = scorer.hellos[0]
    assert isinstance(hello, Hello) and hello.n_samples == 32 and hello.update_times == 3

    selections = read_jsonl(out / "selections.jsonl")
    trained = {row["step"]: row["indices"] for row in read_jsonl(out / "trained_samples.jsonl")}
    assert sorted(trained) == list(range(12))
    # each segment trains its draw shuffled by a generator seeded 42 + its first step
    warm = draw_warmup(32, 8)
    assert trained[0] + trained[1] == training_order(warm, 42).tolist()
    assert trained[8] + trained[9] == training_order(warm, 42).tolist()
    for row in selections:
        s = row["global_step"]
        drawn = torch.tensor(row["sampled_indices"])
        assert trained[s] + trained[s + 1] == training_order(drawn, 42).tolist()
        assert sorted(trained[s] + trained[s + 1]) == sorted(row["sampled_indices"])

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    saved = dict(model.named_parameters())
    for name, tensor in recipe.selection.trainable_tensors().items():
        assert torch.equal(saved[name], tensor)
    assert (out / "training_loss.png").is_file() and (out / "trainer_state.json").is_file()
    assert scorer.ended == [("finished", "trained 12 steps")]  # the run's status on the scorer
    # what the Trainer logged reached the scorer: each loss at its step, the updates' figures
    logged = [(row["step"], row["loss"]) for row in recipe.trainer.state.log_history
              if "loss" in row]  # fmt: skip
    assert logged and [(p.step, p.value) for p in scorer.metrics if p.key == "loss"] == logged
    window_steps = [p.step for p in scorer.metrics if p.key == "selection/window_start"]
    assert window_steps == [r["global_step"] for r in selections if r["window"] is not None]


class RefusingRegistration(FakeScorer):
    def register(self, hello):
        raise RunMismatch("the scorer holds this run id with another dataset")


def test_a_refused_registration_stops_or_goes_on_as_configured(
    tiny_model, demo_file, tmp_path, caplog
):
    kept = json.dumps({"run_id": "earlier-run", "run_token": "its-token"}) + "\n"
    for folder in ("fail", "uniform"):  # an earlier run's identity, which a resume needs
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "run.json").write_text(kept)
    scorer = RefusingRegistration(32)
    with pytest.raises(ScorerFailure) as info:
        run(config(tiny_model, demo_file, tmp_path / "fail"), scorer=scorer)
    assert "with the scorer at tcp://127.0.0.1:5555 failed: the scorer holds" in str(info.value)
    assert "set on_scorer_failure: uniform" in str(info.value)
    assert scorer.closed and scorer.checkpoints == []  # nothing trained, the client closed
    assert not list((tmp_path / "fail").glob("checkpoint-*"))  # nothing to save

    scorer = RefusingRegistration(32)
    out = tmp_path / "uniform"
    run(config(tiny_model, demo_file, out, on_scorer_failure="uniform"), scorer=scorer)
    assert "!!! SCORER FAILURE: registering run" in caplog.text
    assert [c.step for c in scorer.checkpoints] == [2, 4, 6, 10]  # training went on
    assert len(read_jsonl(out / "trained_samples.jsonl")) == 12
    for folder in ("fail", "uniform"):  # a refused start leaves the earlier run resumable
        assert (tmp_path / folder / "run.json").read_text() == kept
    assert "run.json left as it was: the scorer refused run" in caplog.text


class DownFromTheStart(FakeScorer):
    """Never answers: neither the hello nor a probe."""

    def register(self, hello):
        raise ScorerUnavailable("gave up waiting for a reply to the hello")

    def ping(self, seconds):
        super().ping(seconds)
        raise ScorerUnavailable("no answer from http://scorer/healthz")


def test_a_scorer_down_at_registration_is_only_probed_by_the_updates(
    tiny_model, demo_file, tmp_path
):
    scorer, out = DownFromTheStart(32), tmp_path / "out"
    run(config(tiny_model, demo_file, out, on_scorer_failure="uniform"), scorer=scorer)
    assert scorer.checkpoints == [] and scorer.pings == [PROBE_SECONDS] * 4  # nothing waited
    rows = read_jsonl(out / "selections.jsonl")
    assert [(r["global_step"], r["failure_code"]) for r in rows] == [
        (step, "scorer_down") for step in (2, 4, 6, 10)
    ]
    assert "registering the run found it down" in rows[0]["failure"]
    assert len(read_jsonl(out / "trained_samples.jsonl")) == 12  # training went on


def test_a_failed_update_saves_its_step_and_the_resumed_run_sends_it_again(
    tiny_model, demo_file, tmp_path
):
    out = tmp_path / "out"
    failing = FailingAtStep(32, 4)
    with pytest.raises(ScorerFailure) as info:
        run(config(tiny_model, demo_file, out), scorer=failing)
    assert [status for status, _ in failing.ended] == ["failed"]
    assert failing.ended[0][1] == f"ScorerFailure: {info.value}"
    saved = out / "checkpoint-4"
    assert str(info.value) == (
        "update 2 at step 4 failed: gave up waiting for a reply from the scorer (set "
        "on_scorer_failure: uniform to continue without the scorer); the state at step 4 is "
        f"saved in {saved}: rerun with resume_from_checkpoint={saved} to go on from there "
        "(the update that failed is sent again)"
    )
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == 4
    assert not (out / "adapter_model.safetensors").exists()  # not a finished model
    assert [r["global_step"] for r in read_jsonl(out / "selections.jsonl")] == [2]

    _, scorer = train(tiny_model, demo_file, out, resume_from_checkpoint=str(saved))
    assert [c.step for c in scorer.checkpoints] == [4, 6, 10]  # the failed update first
    assert [r["global_step"] for r in read_jsonl(out / "selections.jsonl")] == [2, 4, 6, 10]
    assert [r["step"] for r in read_jsonl(out / "trained_samples.jsonl")] == list(range(12))

    with pytest.raises(ScorerFailure) as info:  # failing again before any step: nothing new
        run(config(tiny_model, demo_file, out, resume_from_checkpoint=str(saved)),
            scorer=FailingAtStep(32, 4))  # fmt: skip
    assert str(info.value).endswith(
        f"nothing was trained after {saved}: rerun with resume_from_checkpoint={saved} to go "
        "on from there (the update that failed is sent again)"
    )


def test_full_finetuning_sends_the_state_dict(tiny_model, demo_file, tmp_path):
    recipe, scorer = train(
        tiny_model,
        demo_file,
        tmp_path / "out",
        finetuning_type="full",
        num_train_epochs=0.5,
        plot_loss=False,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert set(scorer.checkpoints[0].tensors) == set(base.state_dict())
    assert scorer.hellos[0].lora is None


@pytest.mark.parametrize("pure_bf16", [False, True], ids=["master-fp32", "pure-bf16"])
def test_full_finetuning_of_a_bfloat16_model_keeps_float32_master_weights(
    tiny_bf16_model, demo_file, tmp_path, pure_bf16
):
    """A bfloat16 checkpoint's weights train in float32 (optimizer states too): at lr 1e-5
    pure bfloat16 rounds most updates away. pure_bf16 keeps them bfloat16, as asked."""
    recipe, scorer = train(
        tiny_bf16_model, demo_file, tmp_path / "out", finetuning_type="full",
        num_train_epochs=0.5, plot_loss=False, learning_rate=1e-5, pure_bf16=pure_bf16,
    )  # fmt: skip
    trained = {p.dtype for p in recipe.model.parameters()}
    states = {
        t.dtype
        for state in recipe.trainer.optimizer.state.values()
        for t in state.values()
        if t.is_floating_point() and t.dim() > 0
    }
    expected = torch.bfloat16 if pure_bf16 else torch.float32
    assert trained == {expected} and states == {expected}
    base = AutoModelForCausalLM.from_pretrained(tiny_bf16_model)
    before = dict(base.named_parameters())
    moved = [
        float((p.detach().float() - before[n].detach().float()).abs().max())
        for n, p in recipe.model.named_parameters()
    ]
    assert max(moved) > 0
    # the checkpoints travel in the weights' own dtype: what the scorer loads the base in
    assert {t.dtype for t in scorer.checkpoints[0].tensors.values()} == {torch.bfloat16}


def test_optimizer_and_memory_keys_reach_the_trainer(tiny_model, demo_file, tmp_path):
    keys = dict(
        gradient_checkpointing=True, max_grad_norm=0.5, weight_decay=0.01, adam_beta1=0.8,
        adam_beta2=0.99, adam_epsilon=1e-6, save_total_limit=1, save_steps=2, train_step=5,
    )  # fmt: skip
    recipe, scorer = train(tiny_model, demo_file, tmp_path / "out", plot_loss=False, **keys)
    args = recipe.trainer.args
    for key, value in keys.items():
        if key != "train_step":
            assert getattr(args, key) == value, key
    assert args.max_steps == 5 and recipe.trainer.state.global_step == 5  # train_step
    assert [c.step for c in scorer.checkpoints] == [2, 4]
    model = recipe.model.base_model.model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    # trained through the checkpointed layers: LoRA's B matrices, zero at the start, moved
    moved = [t for n, t in recipe.selection.trainable_tensors().items() if "lora_B" in n]
    assert moved and all(t.abs().sum() > 0 for t in moved)
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-5"]


class WindowedScorer(FakeScorer):
    """Weights with a window and loss reductions, for every update but the run's first."""

    def score(self, checkpoint):
        got = super().score(checkpoint)
        if not self.scored:  # the first: uniform, no window
            return got
        window = {"t": 1, "T": 2, "u": 0.5, "start": checkpoint.step, "end": checkpoint.step + 5,
                  "truncated_at": None}  # fmt: skip
        return replace(got, window=window, delta_in_window=0.5, delta_outside=0.25)


def test_selection_figures_reach_tensorboard_at_each_update(tiny_model, demo_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    keys = dict(report_to="tensorboard", plot_loss=False)
    run(config(tiny_model, demo_file, out, **keys), scorer=WindowedScorer(32))
    (events,) = {path.parent for path in out.glob("runs/*/events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    rows = read_jsonl(out / "selections.jsonl")
    assert [r["global_step"] for r in rows] == [2, 4, 6, 10]

    def scalars(name):  # Trainer's TensorBoard writer names a logged key "train/<key>"
        return [(e.step, e.value) for e in board.Scalars(f"train/selection/{name}")]

    assert scalars("seconds_waited") == [
        (r["global_step"], pytest.approx(r["seconds_waited"])) for r in rows
    ]
    # the run's first update has no window: the others' start, and loss reductions
    assert scalars("window_start") == [(4, 4.0), (6, 6.0), (10, 10.0)]
    assert scalars("delta_in_window") == [(4, 0.5), (6, 0.5), (10, 0.5)]
    assert scalars("delta_outside") == [(4, 0.25), (6, 0.25), (10, 0.25)]
    assert scalars("staleness") == [(2, 0.0), (4, 0.0), (6, 0.0), (10, 0.0)]  # sync
    # the Trainer's own logs go on as before, at the update steps too (logging_steps 1)
    assert [e.step for e in board.Scalars("train/loss")] == list(range(1, 13))


def test_resume_trains_the_same_samples_as_an_uninterrupted_run(tiny_model, demo_file, tmp_path):
    out = tmp_path / "out"
    _, first = train(tiny_model, demo_file, out, save_steps=3)
    before = read_jsonl(out / "trained_samples.jsonl")
    selections = [r["sampled_indices"] for r in read_jsonl(out / "selections.jsonl")]
    _, scorer = train(tiny_model, demo_file, out, resume_from_checkpoint=str(out / "checkpoint-6"))
    # updates from step 6 on are sent again (the scorer answers `duplicate`) and drawn again
    assert [c.step for c in scorer.checkpoints] == [6, 10]
    # the resumed run is the same run at the scorer: same run id, same token
    (hello,), (again,) = first.hellos, scorer.hellos
    assert (again.run_id, again.run_token) == (hello.run_id, hello.run_token)
    assert hello.run_token is not None
    _, fresh = train(tiny_model, demo_file, out, overwrite_output_dir=True)
    assert fresh.hellos[0].run_token != hello.run_token  # started afresh: another run
    assert read_jsonl(out / "trained_samples.jsonl") == before
    assert [r["sampled_indices"] for r in read_jsonl(out / "selections.jsonl")] == selections


def test_eval_dataset_logs_eval_loss_before_and_after_training(tiny_model, demo_file, tmp_path):
    out = tmp_path / "out"
    held_out = write_dataset(tmp_path / "eval.json", n=8, seed=9)
    recipe, _ = train(
        tiny_model, demo_file, out, eval_dataset=str(held_out), eval_steps=5, learning_rate=1e-2
    )
    history = recipe.trainer.state.log_history
    evals = [(row["step"], row["eval_loss"]) for row in history if "eval_loss" in row]
    # step 0 (eval_on_start), every eval_steps, and the last step (12)
    assert [step for step, _ in evals] == [0, 5, 10, 12]
    assert evals[-1][1] < evals[0][1]
    saved = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [row["eval_loss"] for row in saved if "eval_loss" in row] == [loss for _, loss in evals]
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == evals[-1][1]
    # evaluation does not count as training: the record holds the 12 training steps only
    assert len(read_jsonl(out / "trained_samples.jsonl")) == 12
