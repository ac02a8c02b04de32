"""One scorer over several processes: the time per checkpoint of a real scorer with 1 rank
on one core against 2 ranks (torchrun, gloo) with one core each, on alpaca_en_demo.

Per checkpoint, the scorer's own received -> scored time (wait_scored), median over the
checkpoints after the first (which loads the model); the ratio 2 ranks / 1 rank is the
figure, its goal at most 0.60. Both runs score the same checkpoints, one after the other.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx

from bench.scorer_eff import lora_hello, perturbed
from bench.util import ALPACA, SCORER_CORE, TRAINER_CORE, Scorer, median, pin_self, wait_scored
from trainer_svc.scorer.publisher import CheckpointPublisher, CheckpointUpload

CHECKPOINTS = 5


def _seconds_per_checkpoint(
    work: Path, model_dir: Path, ranks: int, checkpoints: int, cutoff: int
) -> list[float]:
    run_id = f"bench-ranks-{ranks}"
    hello, _, base, _ = lora_hello(model_dir, ALPACA, run_id, checkpoints, cutoff=cutoff)
    core = SCORER_CORE if ranks == 1 else None  # 2 ranks: one core each, by the OS
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        scorer = Scorer(Path(tmp) / "scorer", "--batch-size", "16", core=core, ranks=ranks)
        # The scorer's processes inherit this one's cores: all of them while it starts, then
        # this process (the trainer side) back on its own.
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        scorer.start()
        pin_self(TRAINER_CORE)
        try:
            publisher = CheckpointPublisher(scorer.zmq_url, wait_seconds=300)
            client = httpx.Client(base_url=scorer.base_url, timeout=60)
            publisher.hello(hello)
            seconds = []
            for k in range(1, checkpoints + 1):
                tensors = perturbed(base, seed=k)
                publisher.send_checkpoint(CheckpointUpload(run_id, k, k, "lora", tensors))
                seconds.append(wait_scored(client, run_id, k))
            publisher.close()
            client.close()
        finally:
            scorer.stop()
    return seconds[1:]


def measure(
    work: Path,
    model_dir: Path,
    *,
    checkpoints: int = CHECKPOINTS,
    cutoff: int = 256,
    toy: bool = False,
) -> dict:
    """toy: 2 checkpoints (the first loads the model) of short samples."""
    if toy:
        return measure(work, model_dir, checkpoints=2, cutoff=64)
    one = _seconds_per_checkpoint(work, model_dir, 1, checkpoints, cutoff)
    two = _seconds_per_checkpoint(work, model_dir, 2, checkpoints, cutoff)
    return {
        "samples": 999,
        "one_rank": one,
        "two_ranks": two,
        "ratio": median(two) / median(one),
    }
