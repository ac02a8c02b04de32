"""The end-of-run check finds a process the suite started and left running."""

import os
import subprocess
import sys

from delta_loss_devtools.waiting import wait_until
from tests.support import leftovers


def test_a_marked_process_is_found_until_it_is_killed():
    value = f"probe-{os.getpid()}"
    env = {**os.environ, leftovers.MARK: value}
    child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], env=env)
    try:
        found = wait_until(lambda: leftovers.marked(value), "the probe to be listed")
        assert list(found) == [child.pid] and "signal.pause" in found[child.pid]
        assert os.environ[leftovers.MARK] != value  # the run's own mark is another
        leftovers.kill(found)
        child.wait()
        assert leftovers.marked(value) == {}
    finally:
        child.kill()
        child.wait()


def test_this_processs_multiprocessing_helper_is_not_a_leftover():
    """The resource tracker multiprocessing starts for the test process ends with it."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    tracker = resource_tracker._resource_tracker._pid
    assert tracker is not None
    assert tracker not in leftovers.marked(os.environ[leftovers.MARK])
