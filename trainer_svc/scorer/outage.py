"""A scorer known to be down: probe it briefly instead of waiting out every update.

With on_scorer_failure: uniform, an update that found the scorer down (no answer within
scorer_wait_seconds: `ScorerUnavailable`) marks it down. Each later update then first asks
the scorer's /healthz, for PROBE_SECONDS at most: no answer is a `ScorerDown` failure (the
update draws uniformly, nothing is sent); an answer marks it up, and that update and the next
wait for the scorer as usual. An error answer (a refusal, a failed scoring) is not an outage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from common.wire.errors import ProtocolError, ScorerUnavailable

logger = logging.getLogger(__name__)

PROBE_SECONDS = 5.0  # how long a probe of a scorer known down waits for its answer


class ScorerDown(ScorerUnavailable):
    """The scorer, found down by an earlier update, did not answer this update's probe."""

    code = "scorer_down"


class Outage:
    """probe(seconds) returns once the scorer answers, or raises ScorerUnavailable."""

    def __init__(self, probe: Callable[[float], None], seconds: float = PROBE_SECONDS):
        self.probe = probe
        self.seconds = seconds
        self.found_by: str | None = None  # the request that found the scorer down, while it is

    def check(self) -> None:
        """Returns when the scorer is not known down or answers the probe; ScorerDown else."""
        if self.found_by is None:
            return
        try:
            self.probe(self.seconds)
        except ScorerUnavailable as exc:
            raise ScorerDown(
                f"the scorer is still down ({exc}): {self.found_by} found it down, so this "
                f"update probed it for {self.seconds:g}s instead of waiting scorer_wait_seconds"
            ) from exc
        logger.warning("the scorer answers again: updates wait for it as usual")
        self.found_by = None

    def note(self, error: ProtocolError, what: str) -> None:
        """After `what` ("update 2 at step 4") failed: no answer in time marks the scorer down."""
        if isinstance(error, ScorerUnavailable) and not isinstance(error, ScorerDown):
            self.found_by = what
            logger.warning(
                "the scorer is down: later updates probe it for %gs before asking it",
                self.seconds,
            )
