"""Instruction samples of very different lengths, written as alpaca JSON."""

from __future__ import annotations

import json
import random
from pathlib import Path

from common.data.datasets import alpaca_columns, alpaca_sample
from common.data.samples import Sample


def make_samples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Instruction pairs of very different lengths (a few chars to a few hundred)."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        pad = " ".join(
            rng.choice(["please", "kindly", "now"]) for _ in range(rng.choice([0, 2, 40]))
        )
        samples.append(
            {"instruction": f"Add {a} and {b}. {pad}".strip(), "input": "", "output": str(a + b)}
        )
    return samples


def as_samples(rows: list[dict[str, str]]) -> list[Sample]:
    """Alpaca rows as the loaders read them."""
    columns = alpaca_columns(None)
    return [alpaca_sample(row, columns) for row in rows]


def write_samples(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text(json.dumps(make_samples(n, seed=seed)))
    return path
