"""The one retry policy: pauses, what is retried, how a wait ends, what is logged.

The clock fixture advances only when the policy sleeps, so no test waits for real."""

import logging

import pytest

from common.wire.errors import RunMismatch, ScorerUnavailable
from trainer_svc.scorer.retry import NotYet, ScorerFailure


def never_ready(calls):
    def attempt(number, seconds_left):
        calls.append((number, seconds_left))
        raise NotYet("no reply within 1.0s")

    return attempt


def run(retry, attempt):
    return retry.run(attempt, waiting_for="a reply from X", advice="that X is up")


def test_pauses_grow_to_a_cap_and_never_run_past_the_wait(clock):
    calls = []
    with pytest.raises(ScorerUnavailable):
        run(clock.policy(40), never_ready(calls))
    assert clock.pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 4.5]
    assert sum(clock.pauses) == 40
    assert [n for n, _ in calls] == list(range(1, 10))
    assert [left for _, left in calls][:3] == [40, 39.5, 38.5]  # what each attempt may use


def test_giving_up_says_what_was_awaited_and_what_to_check(clock):
    with pytest.raises(ScorerUnavailable) as info:
        run(clock.policy(3), never_ready([]))
    assert str(info.value) == (
        "gave up waiting for a reply from X after 4 attempt(s) over 3s "
        "(last: no reply within 1.0s): check that X is up; or raise scorer_wait_seconds (now 3)"
    )


def test_an_attempt_that_succeeds_ends_the_wait(clock):
    calls = []

    def attempt(number, seconds_left):
        calls.append(number)
        if number < 3:
            raise NotYet("queued")
        return "weights"

    assert run(clock.policy(60), attempt) == "weights"
    assert calls == [1, 2, 3] and clock.pauses == [0.5, 1.0]


def test_a_pause_the_attempt_asks_for_is_used_capped_by_the_wait(clock):

    def attempt(number, seconds_left):
        raise NotYet("scoring", pause=3.0)

    with pytest.raises(ScorerUnavailable):
        run(clock.policy(7), attempt)
    assert clock.pauses == [3.0, 3.0, 1.0]


def test_other_errors_are_not_retried(clock):
    calls = []

    def attempt(number, seconds_left):
        calls.append(number)
        raise RunMismatch("fingerprint differs")

    with pytest.raises(RunMismatch, match="fingerprint differs"):
        run(clock.policy(60), attempt)
    assert calls == [1] and clock.pauses == []


def test_a_stop_request_ends_the_wait_with_scorer_failure(clock):
    calls = []
    stop = []  # set by the second attempt, as a SIGTERM handler would between attempts

    def attempt(number, seconds_left):
        calls.append(number)
        if number == 2:
            stop.append(True)
        raise NotYet("no reply within 2.0s")

    retry = clock.policy(600, stop_requested=lambda: bool(stop))
    with pytest.raises(ScorerFailure, match="SIGTERM while waiting for a reply from X"):
        run(retry, attempt)
    assert calls == [1, 2] and clock.pauses == [0.5]


def test_each_retry_is_logged_with_what_attempt_and_seconds(clock, caplog):

    def attempt(number, seconds_left):
        if number == 1:
            raise NotYet("cannot reach http://s")
        if number == 2:
            raise NotYet("step 4 is scoring", pause=0.2, level=logging.DEBUG)
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="trainer_svc.scorer.retry"):
        run(clock.policy(30), attempt)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "waiting for a reply from X: cannot reach http://s (attempt 1, 0s of 30s); "
            "retrying in 0.5s",
        ),
        (
            logging.DEBUG,
            "waiting for a reply from X: step 4 is scoring (attempt 2, 0s of 30s); "
            "retrying in 0.2s",
        ),
    ]


def test_a_long_wait_logs_at_most_one_line_every_ten_seconds(clock, caplog):
    def attempt(number, seconds_left):
        if number <= 12:
            clock.advance(2.0)  # each poll takes 2 s, then asks for a 1 s pause
            raise NotYet(f"step 4 is scoring: {number} of 12", pause=1.0, level=logging.INFO)
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="trainer_svc.scorer.retry"):
        assert run(clock.policy(600), attempt) == "ok"
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    # polls end at 2, 5, 8, ..., 35 s: a line at 2 s, then at the first poll 10 s or more
    # after the last line: 14 s and 26 s
    assert [m.split(": ", 2)[2].split(" (")[0] for m in loud] == ["1 of 12", "5 of 12", "9 of 12"]
    assert len(caplog.records) == 12  # the others at DEBUG


def test_a_louder_cause_is_logged_at_once_within_the_ten_seconds(clock, caplog):
    def attempt(number, seconds_left):
        clock.advance(1.0)
        if number == 1:
            raise NotYet("step 4 is scoring", pause=1.0, level=logging.INFO)
        if number == 2:
            raise NotYet("cannot reach http://s")  # WARNING: the scorer went away
        if number == 3:
            raise NotYet("cannot reach http://s")  # the same again within 10 s: DEBUG
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="trainer_svc.scorer.retry"):
        run(clock.policy(600), attempt)
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING, logging.DEBUG]
