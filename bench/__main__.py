"""`python -m bench` (or `make bench`): every benchmark in one run, written to
BENCHMARKS.md. The trainer side is pinned to core 0, the scorer side to core 1 (taskset /
sched_setaffinity), one thread each. Takes about 10 minutes on 2 CPU cores, plus the
comparison of strategies (bench/compare.py, which also runs alone)."""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars

import datetime
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench import (
    compare,
    full_handoff,
    gpu,
    growth,
    overhead,
    ranks,
    scorer_eff,
    storage,
    torchrun_trainer,
    transfer,
)
from bench.util import ALPACA
from devtools.tiny_model import build_tiny_model

OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
RAW = Path(tempfile.gettempdir()) / "bench_results.json"  # the raw figures, to re-render
MB = 1e6


def section(name: str, fn, results: dict) -> None:  # noqa: ANN001
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception:  # one failed benchmark must not lose the others
        results[name] = {"error": traceback.format_exc()}
    print(f"[bench] {name}: {time.perf_counter() - start:.0f}s", flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    if not ALPACA.is_file():
        raise SystemExit(f"the benchmark data set {ALPACA} is missing (set BENCH_ALPACA)")
    results: dict = {"load_before": os.getloadavg()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny", seed=0)
        section("overhead", lambda: overhead.measure(work, model_dir), results)
        section("scorer", lambda: scorer_eff.measure(work, model_dir, cutoff=256), results)
        section("storage", lambda: storage.measure(work), results)
        section("transfer", lambda: transfer.measure(work), results)
        section("growth", lambda: growth.measure(model_dir), results)
        section("ranks", lambda: ranks.measure(work, model_dir), results)
        section("trainer_ranks", lambda: torchrun_trainer.measure(work, model_dir), results)
        section("full_handoff", lambda: full_handoff.measure(work), results)
        section("compare", lambda: compare.measure(work, model_dir), results)
        section("gpu", gpu.measure, results)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    total = time.perf_counter() - started
    results["load_after"] = os.getloadavg()
    RAW.write_text(json.dumps({"results": results, "total": total}, default=str))
    text = render(results, total)
    OUT.write_text(text)
    print(text)


def render(r: dict, total: float) -> str:
    from bench.report import render as body

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    head = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} by `make bench` (`.venv/bin/python -m bench`, "
        f"{total / 60:.1f} min) on {cpu_name()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {gpu}.",
        "Trainer side pinned to core 0 and scorer side to core 1 (taskset for the scorer "
        "process, sched_setaffinity in the bench process), one torch thread each. Model: the "
        "tiny random Llama of `devtools.tiny_model` (hidden 64, 2 layers, byte vocabulary 384) "
        "with LoRA r=8 on all linear layers; data: alpaca_en_demo.json (999 samples) unless "
        "said otherwise. Ratios are taken per repeat between runs made side by side in the "
        "same invocation, then the median. Load average (1, 5, 15 min) before the run: "
        + ", ".join(f"{v:.2f}" for v in r["load_before"])
        + "; after: "
        + ", ".join(f"{v:.2f}" for v in r["load_after"])
        + " (other work on the machine shows up in every figure).",
        "",
    ]
    return "\n".join(head + body(r)) + "\n"


if __name__ == "__main__":
    main()
