"""`python -m bench`: measure scoring and storage on this machine and write BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
from pathlib import Path

import torch

from bench import scoring, storage
from common.tiny_model import build_tiny_model

OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", seed=0)
        score_rows = scoring.measure(model_dir)
    store = storage.measure()
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} with `make bench` on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}.",
        "Medians of 3 repeats.",
        "",
        "## Scoring one checkpoint (tiny Llama, LoRA r=8, alpaca_en_demo: 999 samples, "
        "byte tokens)",
        "",
        "| batch size | seconds | samples/s | time / bare forward passes | padded / real tokens |",
        "|---|---|---|---|---|",
    ]
    for r in score_rows:
        lines.append(
            f"| {r['batch_size']} | {r['seconds']:.2f} | {r['samples_per_s']:.0f} "
            f"| {r['vs_bare_forward']:.2f} | {r['padding']:.3f} |"
        )
    lines += [
        "",
        f"## Storing one checkpoint's losses (SQLite, WAL, N = {store['n']:,})",
        "",
        f"- write in one transaction: {store['write_seconds']:.2f} s "
        f"({store['rows_per_second']:,.0f} rows/s)",
        f"- read the loss vector back: {store['read_seconds']:.2f} s",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
