"""Full fine-tuning with a 1 GiB checkpoint: what handing each update's checkpoint to the
scorer costs the trainer. `DeltaLossRecipe` (unmodified) fine-tunes every weight of a random
Llama of about 1 GiB in float32 (hidden 1024, 20 layers), async against uniform sampling,
interleaved in each repeat, the trainer on core 0 and the real scorer process on core 1. The
trainer's blocked time is read from `selections.jsonl` (each update's `seconds_waited`, with
its `snapshot_seconds` and `send_wait_seconds`) plus the wait for the last send at the end."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bench import overhead
from bench.util import TRAINER_CORE, Scorer, median, pin_self
from common.model_spec import checkpoint_tensors
from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.tiny_model import build_tiny_model
from trainer_svc.training.snapshot import CheckpointUpload, Snapshot

MODES = ("uniform", "async")
GIB_MODEL = dict(hidden_size=1024, layers=20, heads=16, intermediate_size=2816)
TOY_MODEL = dict(hidden_size=256, layers=2, heads=4, intermediate_size=512)  # about 6 MB


def build_gib_model(work: Path, shape: dict = GIB_MODEL) -> tuple[Path, int]:
    """A random Llama of that shape (about 1 GiB of float32 weights by default); its path and
    size on disk."""
    path = build_tiny_model(work / "gib-model", **shape)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))  # the weights, + headers
    return path, size


def snapshot_alone(model_dir: Path) -> tuple[float, int]:
    """Seconds of `Snapshot.take` of the model's full checkpoint into its reused buffer, with
    nothing else running (the scorer idle): the same copy as an update's, uncontended."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tensors = checkpoint_tensors(model, "full")
    snapshot = Snapshot()
    snapshot.reserve(tensors)
    upload = CheckpointUpload("bench", 0, 1, "full", tensors)
    snapshot.take(upload)
    start = time.perf_counter()
    snapshot.take(upload)
    return time.perf_counter() - start, len(tensors)


def measure(
    work: Path, *, repeats: int = 2, n: int = 16, shape: dict = GIB_MODEL, toy: bool = False
) -> dict:
    """shape: the model's (build_tiny_model's keywords); toy: a model of a few MB, once."""
    if toy:
        return measure(work, repeats=1, n=8, shape=TOY_MODEL)
    pin_self(TRAINER_CORE)
    torch.set_num_threads(1)
    logging.getLogger("trainer_svc").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model_dir, size = build_gib_model(work, shape)
    # short samples (the demo's), so that a step stays cheap for a model of this size
    dataset = write_dataset(work / "full-handoff.json", n=n, seed=0)
    p: dict = {
        "kind": "full",
        "n": n,
        "update_step": 4,
        "update_times": 3,
        "batch": 1,
        "cutoff": 64,
    }
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    blocked: dict[str, list[float]] = {m: [] for m in MODES}
    ratios: list[float] = []
    per_update: list[dict] = []
    with Scorer(work / "scorer-full", "--batch-size", "16") as scorer:
        for _ in range(repeats):
            got = {m: overhead.one_run(m, work, model_dir, dataset, scorer, p) for m in MODES}
            for m in MODES:
                seconds[m].append(got[m][0])
                blocked[m].append(got[m][1])
            ratios.append(got["async"][0] / got["uniform"][0])
            per_update += [
                {k: row[k] for k in ("seconds_waited", "snapshot_seconds", "send_wait_seconds")}
                for row in got["async"][2]
            ]
    uniform = median(seconds["uniform"])
    source = torch.empty(size, dtype=torch.uint8)
    target = torch.empty_like(source)
    target.copy_(source)  # pages faulted in, as the reused snapshot buffer's are
    start = time.perf_counter()
    target.copy_(source)
    copy_s = time.perf_counter() - start
    del source, target
    alone, n_tensors = snapshot_alone(model_dir)
    return {
        "copy_s": copy_s,
        "snapshot_alone_s": alone,
        "n_tensors": n_tensors,
        **p,
        "checkpoint_bytes": size,
        "steps": p["update_step"] * (p["update_times"] + 1),
        "repeats": repeats,
        "seconds": {m: median(v) for m, v in seconds.items()},
        "blocked": {m: median(v) for m, v in blocked.items()},
        "ratio": median(ratios),
        "blocked_share": median(blocked["async"]) / uniform,
        "per_update": per_update,
        "update_blocked_median": median([u["seconds_waited"] for u in per_update]),
        "update_blocked_max": max(u["seconds_waited"] for u in per_update),
        "snapshot_median": median([u["snapshot_seconds"] for u in per_update]),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), repeats=1), indent=1))
