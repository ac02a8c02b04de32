"""Every benchmark section runs and renders at toy size: `python -m bench --toy`, whole."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from delta_loss_devtools.demo_data import write_dataset

ROOT = Path(__file__).resolve().parents[2]
HEADINGS = ["## Summary", *(f"## {i}. " for i in range(1, 15))]  # as bench/report.py writes them
KEPT = [ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.png"))]  # the full run's


def modified() -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in KEPT if path.exists()}


def run_toy_bench(tmp_path: Path) -> tuple[int, str, Path]:
    """Its exit status, its output and the markdown's path. Its whole process group is killed
    at the end, whatever happened: no scorer or trainer it started outlives the test."""
    data = write_dataset(tmp_path / "alpaca_toy.json", n=64, seed=0)
    out, log = tmp_path / "BENCH.md", tmp_path / "bench.log"
    env = {**os.environ, "BENCH_ALPACA": str(data)}
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "--toy", "--out", str(out)],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            status = proc.wait(timeout=1200)  # about 2 minutes on 2 cores
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return status, log.read_text(), out


@pytest.mark.slow  # every section: real scorers, trainers and torchrun groups
@pytest.mark.timeout(1500)  # about 2 minutes alone; far longer on a loaded machine
def test_every_section_runs_and_renders_at_toy_size(tmp_path):
    before = modified()
    status, output, out = run_toy_bench(tmp_path)
    assert status == 0, output[-6000:]
    text = out.read_text()
    missing = [heading for heading in HEADINGS if heading not in text]
    assert missing == [], missing
    assert not re.search(r"traceback|failed|```\nnot run\n```", text, re.IGNORECASE), text
    # a summary row whose figure is missing, but PostgreSQL's where no server could start
    unmeasured = [row for row in text.splitlines() if "not measured (see below)" in row]
    assert [row for row in unmeasured if "PostgreSQL" not in row] == [], unmeasured
    assert modified() == before  # the full run's report and pictures are left alone
