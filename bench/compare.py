"""Does Delta Loss help on real text? `trainer-svc compare` on alpaca_en_demo (999 samples)
with the tiny random model: Delta Loss sync and async, each also at a scoring budget of 0.1,
against uniform sampling, three seeds,
the same steps and eval split (val_size 0.1, seeded by each seed) for every strategy.

`python -m bench.compare` runs this alone and writes its section into BENCHMARKS.md; `make
bench` runs it with the others. The trainer runs in this process (core 0), the scorer in its
own (core 1).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from bench.util import ALPACA, ROOT, TRAINER_CORE, Scorer, pin_self  # noqa: E402
from delta_loss_devtools.tiny_model import build_tiny_model  # noqa: E402
from trainer_svc.tools.compare import summary_tables  # noqa: E402

SEEDS = (42, 43, 44)
STRATEGIES = ("delta_sync", "delta_async", "delta_sync@0.1", "delta_async@0.1", "uniform")
SECTION = "## 12. Does it help? Delta Loss against uniform sampling"

CONFIG = """
model_name_or_path: {model}
stage: sft
do_train: true
finetuning_type: full
dataset: {dataset}
val_size: 0.1
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
per_device_train_batch_size: 4
gradient_accumulation_steps: 1
learning_rate: 3.0e-3
num_train_epochs: 1.0
lr_scheduler_type: cosine
warmup_ratio: 0.05
train_type: dynamic_select
component_name: delta_loss
warmup_step: {every}
update_step: {every}
update_times: {update_times}
eval_steps: {every}
per_device_eval_batch_size: 32
scorer_zmq_url: {zmq}
scorer_http_url: {http}
scorer_wait_seconds: 600
on_scorer_failure: fail
"""


def measure(
    work: Path,
    model_dir: Path,
    *,
    seeds: tuple[int, ...] = SEEDS,
    every: int = 30,
    update_times: int = 5,
    cutoff: int = 256,
    toy: bool = False,
) -> dict[str, Any]:
    """every: steps of the warmup, between updates and between evaluations; toy: one seed,
    6 steps of short samples."""
    if toy:
        return measure(work, model_dir, seeds=SEEDS[:1], every=2, update_times=2, cutoff=64)
    from trainer_svc.tools.compare import compare

    pin_self(TRAINER_CORE)
    torch.set_num_threads(1)  # one core, one thread, as every trainer-side benchmark
    with Scorer(work / "compare-scorer") as scorer:
        config = work / "compare.yaml"
        config.write_text(
            CONFIG.format(
                model=model_dir,
                dataset=ALPACA,
                out=work / "compare-run",
                zmq=scorer.zmq_url,
                http=scorer.base_url,
                every=every,
                update_times=update_times,
                cutoff=cutoff,
            )
        )
        started = time.perf_counter()
        summary = compare(config, strategies=STRATEGIES, seeds=seeds)
        took = time.perf_counter() - started
    result = json.loads(summary.read_text())
    result["total_seconds"] = took
    return result


def render(r: dict[str, Any]) -> list[str]:
    out = [SECTION, ""]
    if "error" in r:
        return out + ["Failed:", "", "```", r["error"], "```", ""]
    seeds = ", ".join(map(str, r["seeds"]))
    return out + [
        f"`trainer-svc compare` on alpaca_en_demo, full fine-tuning of the tiny random model, "
        f"{r['max_steps']} steps of batch 4 per run (warmup 30, five updates 30 steps apart), "
        f"cutoff_len 256, seeds {seeds}, eval loss on a 10% split (`val_size: 0.1`, split by "
        f"each seed) every 30 steps; mean ± standard deviation over seeds "
        f"({r['total_seconds'] / 60:.1f} min for the {len(r['runs'])} runs; "
        "`python -m bench.compare`). `@0.1`: a scoring budget of 0.1 (the initial checkpoint "
        "and the first with a window scored in full, then a tenth of the samples per "
        "checkpoint).",
        "",
        *summary_tables(r),
        "",
    ]


def write_section(lines: list[str], path: Path = ROOT / "BENCHMARKS.md") -> None:
    """This benchmark's section of BENCHMARKS.md replaced (or added at the end)."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    section = "\n".join(lines).rstrip() + "\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    if not ALPACA.is_file():
        raise SystemExit(f"the benchmark data set {ALPACA} is missing (set BENCH_ALPACA)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = measure(work, build_tiny_model(work / "tiny", seed=0))
    lines = render(result)
    write_section(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
