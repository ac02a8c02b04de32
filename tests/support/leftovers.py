"""Processes a test run started and left running: every process the suite starts inherits a
mark in its environment, and at the end of the run those still alive are named, killed, and
fail the run."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

MARK = "DELTA_LOSS_TEST_RUN"
# multiprocessing's helpers of this process: they end when it does, reading its pipe
OWN_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def marked(value: str) -> dict[int, str]:
    """Live processes (not zombies, not this one) whose environment carries MARK=value, with
    their command lines."""
    wanted = f"{MARK}={value}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        own_helper = int(parent) == os.getpid() and any(h in command for h in OWN_HELPERS)
        if state != "Z" and not own_helper:
            found[int(entry.name)] = command.strip()
    return found


def kill(pids: dict[int, str]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)
