"""The access log keeps every request but the polls for weights still pending."""

import logging

from scorer_svc.api.access_log import QuietPolls, quiet_polls


def access_record(status: int) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it."""
    args = ("127.0.0.1:5000", "GET", "/v1/runs/r/weights?step=4", "1.1", status)
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
    )


def test_pending_polls_are_dropped_and_everything_else_kept():
    quiet = QuietPolls()
    assert not quiet.filter(access_record(202))
    assert all(quiet.filter(access_record(status)) for status in (200, 404, 409, 500))
    other = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "plain", None, None)
    assert quiet.filter(other)


def test_the_filter_is_installed_once():
    logger = logging.getLogger("test.access")
    quiet_polls(logger)
    quiet_polls(logger)
    assert sum(isinstance(f, QuietPolls) for f in logger.filters) == 1
