"""Child processes that do not outlive the process that started them: on Linux the kernel
sends them SIGTERM when their parent dies, however it dies (a SIGKILL included), so a scorer
a demo or a test started never serves on as an orphan."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # looked up here, never between fork and exec


def die_with_parent() -> None:
    """Popen's preexec_fn: SIGTERM to the child when its parent dies (Linux; nothing
    elsewhere). Only a call into libc runs between fork and exec."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))
