"""Scorer efficiency: a real scorer process scoring a tiny LoRA run's checkpoints.

Per checkpoint: the time from the ack to /weights answering 200 (octet-stream), against the
bare forward passes of the same model over the same batches in a tight loop, on the same
pinned core; padding waste, peak RSS, RSS after each of 20 checkpoints, and two
checkpoints with identical tensors scored to identical losses.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from transformers import AutoTokenizer

from bench.util import ALPACA, SCORER_CORE, Scorer, median, pin_self, wait_scored
from common.data.datasets import DatasetSpec, load_samples
from common.data.tokenization import TokenizationSettings, encode_dataset
from common.model_spec import LoraSettings, ModelSpec, checkpoint_digest, checkpoint_tensors, pad_id
from common.wire.hello import build_hello
from scorer_svc.scoring.batches import make_batches
from scorer_svc.scoring.model import ScoringModel
from trainer_svc.scorer.publisher import CheckpointPublisher, CheckpointUpload

LORA = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules="all-linear")


def lora_spec(model_dir: Path) -> ModelSpec:
    return ModelSpec(str(model_dir.resolve()), "lora", LORA)


MAX_BATCH_TOKENS = 16384


def lora_hello(model_dir: Path, dataset: Path, run_id: str, update_times: int, cutoff: int):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    settings = TokenizationSettings(cutoff_len=cutoff)
    encoded = encode_dataset(tokenizer, load_samples(DatasetSpec(str(dataset))), settings)
    spec = lora_spec(model_dir)
    model = spec.build(dtype=torch.float32)
    tensors = {n: t.clone() for n, t in checkpoint_tensors(model, "lora").items()}
    hello = build_hello(
        run_id=run_id,
        spec=spec,
        dataset=DatasetSpec(str(dataset)),
        tokenization=settings,
        encoded=encoded,
        window_size=0.2,
        update_times=update_times,
        vocab_size=len(tokenizer),
        model_digest=checkpoint_digest(model, "lora"),
    )
    return hello, encoded, tensors, tokenizer


def perturbed(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: t + 0.02 * torch.randn(t.shape, generator=gen) for n, t in tensors.items()}


def choose_batch_size(model_dir: Path, encoded, pad_id: int, sizes=(1, 4, 16)) -> list[dict]:
    """In this process, pinned to the scorer's core: scoring time per batch size."""
    model = ScoringModel.load(lora_spec(model_dir), device=torch.device("cpu"), dtype=torch.float32)
    rows = []
    for size in sizes:
        batches = make_batches(
            encoded, batch_size=size, max_batch_tokens=MAX_BATCH_TOKENS, pad_id=pad_id
        )
        times = []
        for _ in range(2):
            start = time.perf_counter()
            model.score(batches, len(encoded))
            times.append(time.perf_counter() - start)
        real = sum(b.real_tokens for b in batches)
        rows.append(
            {
                "batch_size": size,
                "seconds": min(times),
                "padding": sum(b.padded_tokens for b in batches) / real,
            }
        )
    return rows


def bare_forward(model: ScoringModel, batches) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            model.model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    return time.perf_counter() - start


def measure(
    work: Path,
    model_dir: Path,
    *,
    checkpoints: int = 20,
    cutoff: int = 1024,
    bare_every: int = 4,
    toy: bool = False,
) -> dict:
    """toy: 3 checkpoints (the fewest that give a bare pass and a repeat) of short samples."""
    if toy:
        return measure(work, model_dir, checkpoints=3, cutoff=64)
    pin_self(SCORER_CORE)
    torch.set_num_threads(1)
    run_id = "bench-eff"
    hello, encoded, base, tokenizer = lora_hello(model_dir, ALPACA, run_id, checkpoints + 1, cutoff)
    pad = pad_id(tokenizer)
    sizes = choose_batch_size(model_dir, encoded, pad)
    best = min(sizes, key=lambda r: r["seconds"])["batch_size"]
    batches = make_batches(encoded, batch_size=best, max_batch_tokens=MAX_BATCH_TOKENS, pad_id=pad)
    bare_model = ScoringModel.load(
        lora_spec(model_dir), device=torch.device("cpu"), dtype=torch.float32
    )
    real = sum(b.real_tokens for b in batches)
    padded = sum(b.padded_tokens for b in batches)
    serve: list[float] = []
    bare: list[float] = []
    ratios: list[float] = []
    rss: list[int] = []
    acks: list[float] = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        scorer = Scorer(Path(tmp) / "scorer", "--batch-size", str(best)).start()
        try:
            publisher = CheckpointPublisher(scorer.zmq_url, wait_seconds=120)
            client = httpx.Client(base_url=scorer.base_url, timeout=60)
            publisher.hello(hello)
            rss_start = scorer.rss()
            for k in range(1, checkpoints + 1):
                # the last checkpoint repeats the tensors of the one before it
                tensors = perturbed(base, seed=min(k, checkpoints - 1))
                start = time.perf_counter()
                publisher.send_checkpoint(CheckpointUpload(run_id, k, k, "lora", tensors))
                acks.append(time.perf_counter() - start)
                serve.append(wait_scored(client, run_id, k))
                rss.append(scorer.rss())
                if k % bare_every == 2 % bare_every:  # k = 2, 6, ...: not the first (model load)
                    bare_model.apply(tensors)
                    bare.append(bare_forward(bare_model, batches))  # side by side, same core
                    ratios.append(serve[-1] / bare[-1])
            pages = [
                client.get(
                    f"/v1/runs/{run_id}/losses",
                    params={"step": s, "max_results": len(encoded)},
                ).json()["losses"]
                for s in (checkpoints - 1, checkpoints)
            ]
            peak = scorer.rss("VmHWM")
            publisher.close()
            client.close()
        finally:
            scorer.stop()
    a, b = np.array(pages[0], dtype=float), np.array(pages[1], dtype=float)
    return {
        "n": len(encoded),
        "real_tokens": real,
        "batch_sizes": sizes,
        "batch_size": best,
        "serve_s": median(serve),
        "bare_s": median(bare),
        "ratio": median(ratios),
        "bare_checkpoints": len(bare),
        "ack_s": median(acks),
        "padding": padded / real,
        "padding_by_size": {r["batch_size"]: r["padding"] for r in sizes},
        "peak_rss": peak,
        "rss_idle": rss_start,
        "rss": rss,
        "rss_growth": rss[-1] / rss[0] - 1,
        "identical": bool(np.array_equal(a, b, equal_nan=True)),
        "max_abs_diff": float(np.nanmax(np.abs(a - b))),
        "checkpoints": checkpoints,
    }


if __name__ == "__main__":
    import json
    import sys

    from delta_loss_devtools.tiny_model import build_tiny_model

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", seed=0)
        print(json.dumps(measure(Path(tmp), model_dir, checkpoints=n), indent=1))
