"""Scoring throughput by batch size, against the bare forward passes over the same batches."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from common.datasets import load_alpaca
from common.tokenization import TokenizationSettings, encode_dataset
from scorer_svc.batching import make_batches
from scorer_svc.scoring import ScoringModel

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def measure(model_dir: Path, *, batch_sizes=(1, 4, 8, 16, 32), repeats: int = 3) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = encode_dataset(tokenizer, load_alpaca(ALPACA), TokenizationSettings(cutoff_len=1024))
    model = ScoringModel.load(
        str(model_dir), kind="lora", lora=LORA, device=torch.device("cpu"), dtype=torch.float32
    )
    rows = []
    for size in batch_sizes:
        batches = make_batches(encoded, batch_size=size, max_batch_tokens=1 << 20, pad_id=0)
        times, bare = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            model.score(batches, len(encoded))
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                for b in batches:
                    model.model(input_ids=b.input_ids, attention_mask=b.attention_mask)
            bare.append(time.perf_counter() - start)
        real = sum(b.real_tokens for b in batches)
        padded = sum(b.padded_tokens for b in batches)
        med, med_bare = sorted(times)[repeats // 2], sorted(bare)[repeats // 2]
        rows.append(
            {
                "batch_size": size,
                "samples": len(encoded),
                "seconds": med,
                "samples_per_s": len(encoded) / med,
                "vs_bare_forward": med / med_bare,
                "padding": padded / real,
            }
        )
    return rows
