"""Waiting on a condition, never on a fixed sleep: poll until true, fail early if a process
being waited on has died, and say what was waited for when time runs out."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

T = TypeVar("T")


class Watched(Protocol):
    """A process wrapper: its Popen as `proc`, and its log so far."""

    proc: Any

    def log(self) -> str: ...


class ProcessExited(AssertionError):
    """A process that was waited on exited first (the message holds its log's tail)."""


def wait_until(
    check: Callable[[], T | None],
    what: str,
    *watched: Watched,
    timeout: float = 300,
    every: float = 0.02,
    most_every: float | None = None,
) -> T:
    """check()'s first truthy value, polled every `every` seconds (doubling up to most_every
    when given: for checks that cost the watched process time). timeout only ends a wait for
    something stuck: generous, since a busy 2-core machine starts a process in minutes."""

    def attempt() -> T | None:
        for item in watched:
            code = item.proc.poll()
            if code is not None:
                raise ProcessExited(
                    f"{type(item).__name__} exited with {code} while waiting for {what}:\n"
                    f"{item.log()[-4000:]}"
                )
        return check()

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=every, min=every, max=most_every or every),
        retry=retry_if_result(operator.not_),
    )
    try:
        found = retrying(attempt)
    except RetryError:
        tails = "\n".join(item.log()[-2000:] for item in watched)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{tails}") from None
    assert found  # the retrying stops only on a truthy value
    return found
