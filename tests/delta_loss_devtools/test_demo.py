"""The demo, start to end, on a smaller dataset, run from an installed (non-editable) copy of
the package in another directory: its YAML ships as package data, nothing reads the checkout."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

LOCAL_STATE = (".git", ".venv", "build", "*.egg-info", "demo_out", "__pycache__", "*_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install .` (no dependencies: the test's environment has them) into a folder."""
    source = tmp_path_factory.mktemp("source") / "checkout"
    # a copy, so that the build's own folders (build/, *.egg-info) land outside the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LOCAL_STATE))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert (target / "delta_loss_devtools" / "demo.yaml").is_file()
    return target


@pytest.mark.timeout(1500)  # about 25 s alone; far longer on a loaded machine
def test_demo_runs_and_reports_from_an_installed_copy(installed, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}
    cmd = [
        sys.executable,
        "-m",
        "delta_loss_devtools.demo",
        "--out",
        str(tmp_path / "out"),
        "--samples",
        "160",
    ]
    # its own process group, killed at the end whatever happened: no scorer the demo started
    # outlives the test
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=1200)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, err[-4000:]
    assert f"tiny model: {tmp_path / 'out'}" in out
    assert out.count(">> update ") == 5
    before, after = out.split("eval loss (held-out set): ")[1].split("\n")[0].split(" -> ")
    assert before.endswith("at step 0") and after.endswith("at step 180")
    assert float(after.split()[0]) < float(before.split()[0])
    assert "curl http://127.0.0.1:" in out and "/samples/0/losses" in out
    assert "mean delta loss per group" in out and "noise" in out.split("mean delta")[1]
    assert "scorer stopped" in out
    assert (tmp_path / "out" / "run" / "model.safetensors").is_file()
    # the same run with uniform sampling, compared: eval loss and the groups each trained
    assert "# Comparison: delta_sync, uniform" in out and "| uniform |" in out
    summary = json.loads((tmp_path / "out" / "run" / "compare" / "summary.json").read_text())
    runs = {r["strategy"]: r for r in summary["runs"]}
    assert set(runs) == {"delta_sync", "uniform"}
    assert {r["samples_trained"] for r in runs.values()} == {180 * 4}
    assert set(runs["uniform"]["group_shares"]) == {"add", "copy", "noise", "reverse", "upper"}
    assert runs["uniform"]["mean_staleness"] is None
    assert str(ROOT) not in (tmp_path / "out" / "scorer.log").read_text()


def test_the_installed_copy_is_the_one_imported(installed):
    code = (
        "import delta_loss_devtools, scorer_svc, trainer_svc, common; "
        "print(delta_loss_devtools.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=installed.parent, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip().startswith(str(installed))
