"""A child started with die_with_parent goes when its parent is SIGKILLed."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from delta_loss_devtools.waiting import wait_until

PARENT = """
import signal, subprocess, sys
from delta_loss_devtools.children import die_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import signal; signal.pause()"],  # idle until a signal
    preexec_fn=die_with_parent if sys.argv[1] == "yes" else None,
)
print(child.pid, flush=True)
signal.pause()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _orphan_of_a_killed_parent(die: str) -> int:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, die], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    parent.stdout.close()
    return child


def test_a_child_dies_with_its_parent_even_a_killed_one():
    child = _orphan_of_a_killed_parent("yes")
    try:
        wait_until(lambda: not _alive(child), "the orphaned child to get SIGTERM and end")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_without_it_the_child_would_live_on():
    """The control: the same child without die_with_parent outlives its killed parent."""
    child = _orphan_of_a_killed_parent("no")
    try:
        assert _alive(child)
    finally:
        os.kill(child, signal.SIGKILL)
