"""How the trainer waits for the scorer: one retry policy for every request it makes.

An attempt that may succeed later raises `NotYet` (no reply, scorer not reachable, checkpoint
not scored yet); anything else it raises (an error reply, a refused token, a failed scoring)
ends the wait at once. Between attempts the pause grows (0.5 s, doubled, at most 10 s) unless
the attempt asks for its own (`NotYet.pause`, e.g. from Retry-After); no pause runs past the
wait. Each retry is logged with what is waited for, the attempt and the seconds spent; within
10 s of a line, a retry no louder than it goes to DEBUG, so a long wait says where it is every
10 s and a new, louder cause (the scorer gone while scoring) is said at once. Once
`wait_seconds` are spent it gives up with `ScorerUnavailable`, whose message says what to
check; a stop request (SIGTERM) ends the wait with `ScorerFailure`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential,
)

from common.wire.errors import ScorerUnavailable

logger = logging.getLogger(__name__)

FIRST_PAUSE = 0.5  # seconds before the second attempt; doubled per attempt
MAX_PAUSE = 10.0

T = TypeVar("T")


class ScorerFailure(RuntimeError):
    """The trainer stops because of the scorer: it did not deliver and on_scorer_failure is
    `fail`, or a stop was requested while the trainer waited for it."""


class StopRequested(ScorerFailure):
    """A stop (SIGTERM) was asked for while the trainer waited for the scorer."""


class NotYet(Exception):
    """An attempt that may succeed later: `reason` says why this one did not; `pause` is the
    pause it asks for (None: the growing pause); `level` is how loudly the retry is logged."""

    def __init__(self, reason: str, *, pause: float | None = None, level: int = logging.WARNING):
        super().__init__(reason)
        self.reason = reason
        self.pause = pause
        self.level = level


def never() -> bool:
    """The stop_requested of a wait that only time ends."""
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """wait_seconds: how long to keep trying; sleep and clock are injected by tests;
    stop_requested: checked after each failed attempt (the recipe's SIGTERM flag)."""

    wait_seconds: float
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    stop_requested: Callable[[], bool] = never

    def run(self, attempt: Callable[[int, float], T], *, waiting_for: str, advice: str) -> T:
        """attempt(number, seconds_left) until it returns. waiting_for names what is awaited
        ("a reply from the scorer at ... to ..."); advice is what to check when giving up."""
        wait = _Wait(self, waiting_for, advice, started=self.clock())
        for trying in wait.retrying():
            with trying:
                return attempt(trying.retry_state.attempt_number, wait.seconds_left())
        raise AssertionError("a tenacity loop ends by returning or raising")


# A long wait logs at most one line this often (the others go to DEBUG): a trainer waiting
# minutes for a large checkpoint writes a line of progress every 10 s, not one per poll.
LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class _Wait:
    """One wait under a policy: when it started, what it is for, when it last logged."""

    policy: RetryPolicy
    waiting_for: str
    advice: str
    started: float
    _logged_at: list[float] = field(default_factory=list)  # [elapsed, level] of the last line

    def retrying(self) -> Retrying:
        return Retrying(
            sleep=self.policy.sleep,
            stop=self._stop,
            wait=self._pause,
            retry=retry_if_exception_type(NotYet),
            before_sleep=self._log,
            retry_error_callback=self._give_up,
        )

    def elapsed(self) -> float:
        return self.policy.clock() - self.started

    def seconds_left(self) -> float:
        return self.policy.wait_seconds - self.elapsed()

    def _stop(self, state: RetryCallState) -> bool:
        """After a failed attempt: the wait is spent, or a stop was requested."""
        return self.seconds_left() <= 0 or self.policy.stop_requested()

    def _pause(self, state: RetryCallState) -> float:
        asked = _last_error(state).pause
        pause = asked if asked is not None else _GROWING(state)
        return max(0.0, min(pause, self.seconds_left()))

    def _log(self, state: RetryCallState) -> None:
        error = _last_error(state)
        level, now = error.level, self.elapsed()
        if level > logging.DEBUG:
            last = self._logged_at  # [elapsed, level] of the last line logged
            recent = bool(last) and now - last[0] < LOG_EVERY_SECONDS
            if recent and level <= last[1]:
                level = logging.DEBUG  # the like was said less than LOG_EVERY_SECONDS ago
            else:
                last[:] = [now, level]
        logger.log(
            level,
            "waiting for %s: %s (attempt %d, %.0fs of %.0fs); retrying in %.1fs",
            self.waiting_for,
            error.reason,
            state.attempt_number,
            self.elapsed(),
            self.policy.wait_seconds,
            state.upcoming_sleep,
        )

    def _give_up(self, state: RetryCallState) -> NoReturn:
        if self.policy.stop_requested():
            raise StopRequested(f"SIGTERM while waiting for {self.waiting_for}")
        raise ScorerUnavailable(
            f"gave up waiting for {self.waiting_for} after {state.attempt_number} attempt(s) "
            f"over {self.elapsed():.0f}s (last: {_last_error(state).reason}): check "
            f"{self.advice}; or raise scorer_wait_seconds (now {self.policy.wait_seconds:g})"
        )


_GROWING = wait_exponential(multiplier=FIRST_PAUSE, max=MAX_PAUSE)


def _last_error(state: RetryCallState) -> NotYet:
    """The NotYet of the attempt just made (only those are retried)."""
    assert state.outcome is not None
    error = state.outcome.exception()
    assert isinstance(error, NotYet)
    return error
