"""`python -m bench` (or `make bench`): every benchmark in one run, written to
BENCHMARKS.md. The trainer side is pinned to core 0, the scorer side to core 1 (taskset /
sched_setaffinity), one thread each. Takes about 10 minutes on 2 CPU cores, plus the
comparison of strategies (bench/compare.py, which also runs alone). Every section runs on
the CPU but the GPU section (bench/gpu.py), which runs in a process of its own.

`python -m bench --toy --out PATH`: every section at toy size (a check that each one runs
and renders, not a measurement), written to PATH; exits 1 if any section failed.
"""

# ruff: noqa: E402 - the environment is set before the imports: torch must not see a GPU
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars
# Only the GPU section uses a GPU: the trainer (Hugging Face's Trainer) takes one whenever it
# sees one, so this process and its children see none (set before torch first looks), and
# bench/gpu.py runs in a process of its own, given the GPUs as they were.
VISIBLE_GPUS = os.environ.get("CUDA_VISIBLE_DEVICES")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import argparse
import datetime
import functools
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "BENCHMARKS.md"
RAW = Path(tempfile.gettempdir()) / "bench_results.json"  # the raw figures, to re-render
MB = 1e6
TOY_SAMPLES = 64  # the toy data set's rows, when BENCH_ALPACA names none

# measure(work, model_dir, toy): a section's raw figures
Measure = Callable[[Path, Path, bool], dict]


def sections() -> list[tuple[str, Measure]]:
    """Every benchmark, in the order it runs, by its key in the results. Imported here, not
    at the top: the modules read BENCH_ALPACA when imported, and --toy may set it first."""
    from bench import (
        cadence,
        compare,
        fidelity,
        full_handoff,
        gpu_memory,
        growth,
        overhead,
        ranks,
        scorer_eff,
        storage,
        torchrun_trainer,
        transfer,
    )

    return [
        ("overhead", lambda w, m, toy: overhead.measure(w, m, toy=toy)),
        ("scorer", lambda w, m, toy: scorer_eff.measure(w, m, cutoff=256, toy=toy)),
        ("storage", lambda w, m, toy: storage.measure(w, toy=toy)),
        ("transfer", lambda w, m, toy: transfer.measure(w, toy=toy)),
        ("growth", lambda w, m, toy: growth.measure(m, toy=toy)),
        ("ranks", lambda w, m, toy: ranks.measure(w, m, toy=toy)),
        ("trainer_ranks", lambda w, m, toy: torchrun_trainer.measure(w, m, toy=toy)),
        ("full_handoff", lambda w, m, toy: full_handoff.measure(w, toy=toy)),
        ("compare", lambda w, m, toy: compare.measure(w, m, toy=toy)),
        ("gpu", lambda w, m, toy: with_gpus("bench.gpu", toy=toy)),
        ("fidelity", lambda w, m, toy: fidelity.measure(w, m, toy=toy)),
        ("cadence", lambda w, m, toy: cadence.measure(w, m, toy=toy)),
        ("gpu_memory", lambda w, m, toy: gpu_memory.measure(w, toy=toy)),
    ]


def with_gpus(module: str, *, toy: bool) -> dict:
    """The figures `python -m MODULE [--toy]` prints (JSON, its last line of output), run
    with the GPUs this process hides from itself."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if VISIBLE_GPUS is not None:
        env["CUDA_VISIBLE_DEVICES"] = VISIBLE_GPUS
    command = [sys.executable, "-m", module, *(["--toy"] if toy else [])]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def section(name: str, fn: Callable[[], dict], results: dict) -> None:
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


def failures(results: dict) -> list[str]:
    """The sections (and parts of one, as storage's "postgresql") whose figures are an
    error; a part skipped for want of a GPU or a server is not one."""
    found = []
    for name, value in results.items():
        if not isinstance(value, dict):
            continue
        if "error" in value:
            found.append(name)
        found += [
            f"{name}.{key}" for key, v in value.items() if isinstance(v, dict) and "error" in v
        ]
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Every benchmark.")
    toy = "every section at toy size: a check that each runs and renders; needs --out"
    parser.add_argument("--toy", action="store_true", help=toy)
    parser.add_argument("--out", type=Path, help=f"where the markdown goes (default {OUT.name})")
    args = parser.parse_args(argv)
    if args.toy and args.out is None:
        parser.error(f"--toy needs --out: its figures must not replace {OUT.name}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or OUT
    results: dict = {"load_before": os.getloadavg()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.toy and not os.environ.get("BENCH_ALPACA"):
            toy_data = write_dataset(work / "alpaca_toy.json", n=TOY_SAMPLES, seed=0)
            os.environ["BENCH_ALPACA"] = str(toy_data)
        from bench.util import ALPACA

        if not ALPACA.is_file():
            raise SystemExit(f"the benchmark data set {ALPACA} is missing (set BENCH_ALPACA)")
        model_dir = build_tiny_model(work / "tiny", seed=0)
        for name, measure in sections():
            section(name, functools.partial(measure, work, model_dir, args.toy), results)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    total = time.perf_counter() - started
    results["load_after"] = os.getloadavg()
    raw = out.with_suffix(".json") if args.toy else RAW
    raw.write_text(json.dumps({"results": results, "total": total}, default=str))
    text = render(results, total, toy=args.toy)
    out.write_text(text)
    print(text)
    if args.toy and (failed := failures(results)):
        sys.exit(f"[bench] failed: {', '.join(failed)}")


def render(r: dict, total: float, *, toy: bool = False) -> str:
    from bench.report import render as body

    gpu = r.get("gpu", {}).get("device", "no GPU")  # the GPU section's (hidden from this process)
    head = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} by `make bench` (`.venv/bin/python -m bench`, "
        f"{total / 60:.1f} min) on {cpu_name()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {gpu}.",
        "Trainer side pinned to core 0 and scorer side to core 1 (taskset for the scorer "
        "process, sched_setaffinity in the bench process), one torch thread each. Model: the "
        "tiny random Llama of `delta_loss_devtools.tiny_model` (hidden 64, 2 layers, byte "
        "vocabulary 384) "
        "with LoRA r=8 on all linear layers; data: alpaca_en_demo.json (999 samples) unless "
        "said otherwise. Ratios are taken per repeat between runs made side by side in the "
        "same invocation, then the median. Load average (1, 5, 15 min) before the run: "
        + ", ".join(f"{v:.2f}" for v in r["load_before"])
        + "; after: "
        + ", ".join(f"{v:.2f}" for v in r["load_after"])
        + " (other work on the machine shows up in every figure).",
        "",
    ]
    if toy:
        head[0] += " (toy sizes: every section runs; the figures mean nothing)"
    return "\n".join(head + body(r)) + "\n"


if __name__ == "__main__":
    main()
