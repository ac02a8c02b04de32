"""Peers refused in the handshake are logged, at most once a minute with a count."""

import logging

from scorer_svc.security.zap import LOG_EVERY_SECONDS, Refusals


def test_refusals_are_logged_at_once_then_counted_once_a_minute(caplog):
    now = [1000.0]
    refusals = Refusals(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="scorer_svc.security.zap"):
        refusals.note("wrong token")
        for _ in range(500):  # a peer knocking in a loop
            now[0] += 0.01
            refusals.note("wrong token")
        assert [r.getMessage() for r in caplog.records] == [
            "refused a ZeroMQ peer in the handshake: wrong token"
        ]
        now[0] += LOG_EVERY_SECONDS
        refusals.note("CURVE key abcdefgh... is not among the authorized keys")
    assert len(caplog.records) == 2
    assert caplog.records[1].getMessage() == (
        "refused 501 ZeroMQ peers in the handshake in the last 60 s, the last: "
        "CURVE key abcdefgh... is not among the authorized keys"
    )
