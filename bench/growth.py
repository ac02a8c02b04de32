"""Scoring time against N (short samples) and against sequence length, in-process
on one pinned core, with a log-log fit; plotted to docs/scoring_growth.png."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.util import SCORER_CORE, pin_self
from common.data.tokenization import IGNORE_INDEX, EncodedSample
from common.model_spec import LoraSettings, ModelSpec
from scorer_svc.scoring.batches import make_batches
from scorer_svc.scoring.model import ScoringModel

PLOT = Path(__file__).resolve().parents[1] / "docs" / "scoring_growth.png"


def samples(n: int, length: int, seed: int) -> list[EncodedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(3, 250, size=length).tolist()
        prompt = length // 2
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        out.append(EncodedSample(input_ids=ids, labels=labels))
    return out


def timed(model: ScoringModel, data: list[EncodedSample]) -> float:
    batches = make_batches(data, batch_size=16, max_batch_tokens=16384, pad_id=0)
    start = time.perf_counter()
    model.score(batches, len(data))
    return time.perf_counter() - start


def slope(x: list[int], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def measure(
    model_dir: Path,
    ns=(1_000, 10_000, 100_000),
    lengths=(64, 128, 256, 512, 1024),
    *,
    per_len: int = 256,
    plot_path: Path = PLOT,
    toy: bool = False,
):
    """per_len: samples per length; toy: a few hundred samples, the plot not kept."""
    if toy:
        with tempfile.TemporaryDirectory() as tmp:
            picture = Path(tmp) / PLOT.name
            return measure(model_dir, (64, 128, 256), (16, 32, 64), per_len=16, plot_path=picture)
    pin_self(SCORER_CORE)
    torch.set_num_threads(1)
    lora = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules="all-linear")
    spec = ModelSpec(str(model_dir), "lora", lora)
    model = ScoringModel.load(spec, device=torch.device("cpu"), dtype=torch.float32)
    by_n = [timed(model, samples(n, 16, seed=n)) for n in ns]
    by_len = [timed(model, samples(per_len, length, seed=length)) for length in lengths]
    result = {
        "ns": list(ns),
        "by_n": by_n,
        "slope_n": slope(list(ns), by_n),
        "lengths": list(lengths),
        "per_len": per_len,
        "by_len": by_len,
        "slope_len": slope(list(lengths), by_len),
    }
    plot(result, plot_path)
    return result


def plot(r: dict, path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.loglog(r["ns"], r["by_n"], "o-")
    a.set(xlabel="N samples (16 tokens each)", ylabel="seconds per checkpoint",
          title=f"vs N: slope {r['slope_n']:.2f}")  # fmt: skip
    b.loglog(r["lengths"], r["by_len"], "o-")
    b.set(xlabel=f"sequence length (tokens, {r['per_len']} samples)", ylabel="seconds",
          title=f"vs length: slope {r['slope_len']:.2f}")  # fmt: skip
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Scoring time, tiny Llama + LoRA, CPU, one core, batch 16")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
