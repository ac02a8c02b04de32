"""The demo, start to end, on a smaller dataset."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_runs_and_reports(tmp_path):
    cmd = [sys.executable, "-m", "devtools.demo", "--out", str(tmp_path), "--samples", "160"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert out.count(">> update ") == 5
    before, after = out.split("eval loss (held-out set): ")[1].split("\n")[0].split(" -> ")
    assert before.endswith("at step 0") and after.endswith("at step 180")
    assert float(after.split()[0]) < float(before.split()[0])
    assert "curl http://127.0.0.1:" in out and "/samples/0/losses" in out
    assert "mean delta loss per group" in out and "noise" in out.split("mean delta")[1]
    assert "scorer stopped" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()
