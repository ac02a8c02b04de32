"""Trainer wall time of one dynamic-selection run, by how its weights are obtained.

All four variants run DeltaLossRecipe (trainer_svc, unmodified) in this process, pinned to
the trainer's core with one thread, interleaved in each repeat:
- uniform: no scorer and no hand-off (nothing copied, nothing sent); the fake scorer
  (delta_loss_devtools) gives uniform weights (update 1 draws randperm, later updates
  multinomial over equal weights, as without scoring);
- async / sync: the real scorer in its own process on the other core (ZeroMQ + REST);
- inprocess: the published method: at each update the trainer pauses and scores all N
  samples itself with its own model, one sample at a time, then applies the same rule.
Only `recipe.train()` is timed (setup and the scorer's start are not).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.util import ALPACA, ROOT, TRAINER_CORE, Scorer, median, pin_self
from common.selection import delta_weights, uniform_weights
from delta_loss_devtools.fake_scorer import FakeScorer
from delta_loss_devtools.fake_scorer import uniform_weights as fake_uniform
from trainer_svc.config.train_config import load_config
from trainer_svc.scorer.publisher import CheckpointUpload
from trainer_svc.scorer.sender import BackgroundSender, Handoff
from trainer_svc.scorer.weights import ScorerWeights
from trainer_svc.training.recipe import DeltaLossRecipe

MODES = ("uniform", "async", "sync", "inprocess")

CONFIG = """
model_name_or_path: {model}
stage: sft
do_train: true
finetuning_type: {kind}
{lora}dataset: {dataset}
template: plain
cutoff_len: {cutoff}
dataloader_num_workers: 0
seed: 42
output_dir: {out}
logging_steps: 1000
save_steps: 100000
plot_loss: false
report_to: none
overwrite_output_dir: true
per_device_train_batch_size: {batch}
gradient_accumulation_steps: 1
learning_rate: 1.0e-3
num_train_epochs: 1.0
lr_scheduler_type: cosine
train_type: dynamic_select
components_cfg_file: {components}
component_name: delta_loss
warmup_step: {update_step}
update_step: {update_step}
update_times: {update_times}
selection_mode: {mode}
scorer_zmq_url: {zmq}
scorer_http_url: {http}
scorer_wait_seconds: 300
on_scorer_failure: fail
"""


class InProcess(FakeScorer):
    """The published method: the trainer's own model scores every sample, batch of one."""

    recipe: DeltaLossRecipe

    def __init__(self, n: int, update_times: int, window_size: float) -> None:
        super().__init__(n)
        self.update_times = update_times
        self.window_size = window_size
        self.initial: np.ndarray | None = None

    def score(self, checkpoint: CheckpointUpload) -> ScorerWeights:
        step, update_index = checkpoint.step, checkpoint.update_index
        model = self.recipe.model
        was_training = model.training
        model.eval()
        losses = np.full(self.n_samples, np.nan)
        with torch.no_grad():
            for i, sample in enumerate(self.recipe.encoded):
                if sample.n_label_tokens:
                    out = model(
                        input_ids=torch.tensor([sample.input_ids]),
                        labels=torch.tensor([sample.labels]),
                    )
                    losses[i] = float(out.loss)
        model.train(was_training)
        if self.initial is None:  # the run's first update: its losses are the initial ones
            self.initial = losses
            values, window = uniform_weights(losses), None
        else:
            assert self.initial is not None
            found, values = delta_weights(
                self.initial, losses, update_index, self.update_times, self.window_size
            )
            window = {"t": found.t, "T": found.T, "u": found.u, "start": found.start,
                      "end": found.end, "truncated_at": found.truncated_at}  # fmt: skip
        return ScorerWeights(step, update_index, torch.tensor(values, dtype=torch.float64), window)


class NoHandOff(BackgroundSender):
    """Uniform sampling's stand-in for the background sender: the fake scorer is handed the
    live tensors in the training thread (it only keeps a reference), nothing is copied."""

    def send(self, upload: CheckpointUpload) -> Handoff:
        self._send(upload)
        return Handoff(0.0, 0.0)

    def result(self) -> dict:
        return {}


def subset(n: int, out: Path) -> Path:
    path = out / f"alpaca_{n}.json"
    path.write_text(json.dumps(json.loads(ALPACA.read_text())[:n]))
    return path


def one_run(mode: str, work: Path, model_dir: Path, dataset: Path, scorer: Scorer, p: dict):
    out = work / f"run-{mode}-{time.monotonic_ns()}"
    yaml = work / f"{out.name}.yaml"
    yaml.write_text(
        CONFIG.format(
            model=model_dir,
            dataset=dataset,
            out=out,
            mode="sync" if mode in ("uniform", "inprocess") else mode,
            zmq=scorer.zmq_url,
            http=scorer.base_url,
            components=ROOT / "examples" / "components.yaml",
            lora="lora_target: all\nlora_rank: 8\nlora_alpha: 16\n" if p["kind"] == "lora" else "",
            **p,
        )
    )
    loaded = load_config(yaml)
    stub: FakeScorer | None = None
    if mode == "uniform":  # plain sampling: nothing sent anywhere
        stub = FakeScorer(p["n"], weights=fake_uniform)
    elif mode == "inprocess":
        stub = InProcess(p["n"], p["update_times"], loaded.window_size)
    recipe = DeltaLossRecipe(loaded, scorer=stub)
    if isinstance(stub, InProcess):
        stub.recipe = recipe
    try:
        recipe.setup()
        if mode == "uniform":  # plain sampling: nothing copied nor handed over either
            assert recipe.coordinator is not None and stub is not None
            recipe.coordinator.sender = NoHandOff(stub.send_checkpoint)
        start = time.perf_counter()
        recipe.train()
        seconds = time.perf_counter() - start
    finally:
        recipe.cleanup()
    rows = [json.loads(line) for line in (out / "selections.jsonl").read_text().splitlines()]
    final = recipe.coordinator.finish_wait_seconds if recipe.coordinator is not None else 0.0
    blocked = sum(row["seconds_waited"] for row in rows) + final
    return seconds, blocked, rows


def measure(
    work: Path,
    model_dir: Path,
    *,
    n: int = 512,
    repeats: int = 3,
    update_step: int = 20,
    update_times: int = 3,
    batch: int = 8,
    cutoff: int = 256,
    toy: bool = False,
) -> dict:
    """toy: a few samples and steps, once (a check that the section runs)."""
    if toy:
        return measure(
            work, model_dir, n=16, repeats=1, update_step=2, update_times=2, batch=4, cutoff=64
        )
    pin_self(TRAINER_CORE)
    torch.set_num_threads(1)
    logging.getLogger("trainer_svc").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    p = {
        "kind": "lora",
        "n": n,
        "update_step": update_step,
        "update_times": update_times,
        "batch": batch,
        "cutoff": cutoff,
    }
    dataset = subset(n, work)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    ratios: dict[str, list[float]] = {m: [] for m in MODES}
    waited: dict[str, list[float]] = {m: [] for m in MODES}
    with Scorer(work / "scorer-overhead", "--batch-size", "16") as scorer:
        for _ in range(repeats):
            got = {m: one_run(m, work, model_dir, dataset, scorer, p) for m in MODES}
            for m in MODES:
                times[m].append(got[m][0])
                waited[m].append(got[m][1])
                ratios[m].append(got[m][0] / got["uniform"][0])
    return {
        **p,
        "steps": update_step * (update_times + 1),
        "repeats": repeats,
        "seconds": {m: median(v) for m, v in times.items()},
        "ratio": {m: median(v) for m, v in ratios.items()},
        "updates_s": {m: median(v) for m, v in waited.items()},
        "blocked_share": {m: median(v) / median(times["uniform"]) for m, v in waited.items()},
    }


if __name__ == "__main__":
    from delta_loss_devtools.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", seed=0)
        print(json.dumps(measure(Path(tmp), model_dir, repeats=1, n=512, update_step=10), indent=1))
