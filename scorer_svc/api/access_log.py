"""The HTTP access log without the trainer's polls for weights not ready yet: a trainer waiting
for a checkpoint asks every few seconds, and each 202 would be one more line."""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class QuietPolls(logging.Filter):
    """Drops uvicorn's access lines whose status is 202 (still pending); keeps every other."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # client, method, path, version, status
            return args[4] != 202
        return True


def quiet_polls(logger: logging.Logger | None = None) -> None:
    """Install QuietPolls on uvicorn's access logger, once."""
    target = logger or logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, QuietPolls) for f in target.filters):
        target.addFilter(QuietPolls())
