"""The weights client against scripted HTTP answers (httpx.MockTransport)."""

import logging

import httpx
import pytest

from common.wire.errors import ScorerUnavailable, Unauthorized, UnknownRun
from trainer_svc.scorer.weights import ScoringFailed, WeightsClient

BODY = {
    "run_id": "r",
    "step": 4,
    "update_index": 2,
    "t": 1,
    "T": 2,
    "u": 0.5,
    "window": {"start": 1, "end": 2, "truncated_at": None},
    "n_samples": 3,
    "n_ranked": 3,
    "weights": [0.2, 0.6, 0.2],
}


def client(answers, wait=30.0):
    """answers: a list of (status, json, headers) served in order; records requests."""
    seen, sleeps = [], []

    def handler(request):
        seen.append(request)
        if isinstance(answers[0], Exception):
            raise answers.pop(0)
        status, body, headers = answers.pop(0)
        return httpx.Response(status, json=body, headers=headers)

    http = httpx.Client(base_url="http://scorer", transport=httpx.MockTransport(handler))
    wc = WeightsClient("http://scorer", "r", wait_seconds=wait, client=http, sleep=sleeps.append)
    return wc, seen, sleeps


def test_wait_for_polls_soon_then_no_faster_than_retry_after():
    answers = [
        (202, {"detail": "queued"}, {"Retry-After": "2"}),
        *[(202, {"detail": "scoring"}, {"Retry-After": "1"})] * 6,
        (200, BODY, {}),
    ]
    wc, seen, sleeps = client(answers)
    got = wc.wait_for(4)
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [r.url.params["step"] for r in seen] == ["4"] * 8
    assert got.step == 4 and got.update_index == 2
    assert got.weights.tolist() == [0.2, 0.6, 0.2]
    assert got.window == {"t": 1, "T": 2, "u": 0.5, "start": 1, "end": 2, "truncated_at": None}


def test_unreachable_scorer_backs_off_then_gives_up():
    answers = [httpx.ConnectError("refused")] * 50
    wc, seen, sleeps = client(answers, wait=0.0001)
    with pytest.raises(ScorerUnavailable, match="scorer_http_url"):
        wc.wait_for(4)
    assert len(seen) >= 1


def test_backoff_grows_between_connection_errors():
    answers = [httpx.ConnectError("refused")] * 3 + [(200, BODY, {})]
    wc, _, sleeps = client(answers)
    wc.wait_for(4)
    assert sleeps == [0.5, 1.0, 2.0]


def test_an_unknown_step_is_asked_again_with_a_growing_pause(caplog):
    answers = [(404, {"detail": "no checkpoint at step 4"}, {})] * 2 + [(200, BODY, {})]
    wc, seen, sleeps = client(answers)
    with caplog.at_level(logging.DEBUG, logger="trainer_svc.scorer.retry"):
        assert wc.wait_for(4).step == 4
    assert sleeps == [0.5, 1.0] and len(seen) == 3
    assert "HTTP 404: no checkpoint at step 4 (attempt 2," in caplog.text
    assert "waiting for the weights of checkpoint step 4 from http://scorer" in caplog.text
    # the second line came within 10 s of the first: at DEBUG
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]


def test_an_unknown_run_is_not_waited_for():
    body = {"detail": "no run 'r'; GET /v1/runs lists the runs", "code": "unknown_run"}
    unknown = (404, body, {})
    wc, seen, sleeps = client([unknown, unknown])
    with pytest.raises(UnknownRun, match="the scorer at http://scorer has no run r"):
        wc.wait_for(4)
    with pytest.raises(UnknownRun):
        wc.latest()  # not "nothing scored yet"
    assert len(seen) == 2 and sleeps == []


def test_ping_asks_healthz_once_within_its_seconds():
    wc, seen, sleeps = client([(200, {"status": "ok"}, {})])
    wc.ping(5)
    assert [r.url.path for r in seen] == ["/healthz"]
    assert seen[0].extensions["timeout"] == dict.fromkeys(("connect", "read", "write", "pool"), 5)
    wc, _, _ = client([(503, {"detail": "the scorer's database is unavailable"}, {})])
    with pytest.raises(ScorerUnavailable, match="healthz answered HTTP 503: the scorer's data"):
        wc.ping(5)
    wc, seen, sleeps = client([httpx.ConnectError("refused")])
    with pytest.raises(ScorerUnavailable, match="no answer from http://scorer/healthz"):
        wc.ping(5)
    assert len(seen) == 1 and sleeps == []  # one try, no pause


def test_failed_checkpoint_raises_scoring_failed():
    wc, _, _ = client([(409, {"detail": "out of memory"}, {})])
    with pytest.raises(ScoringFailed, match="out of memory"):
        wc.wait_for(4)


def test_latest_is_none_until_something_is_scored():
    wc, seen, _ = client([(404, {"detail": "no scored checkpoint"}, {}), (200, BODY, {})])
    assert wc.latest() is None
    assert wc.latest().step == 4
    assert "step" not in seen[0].url.params


def test_token_is_sent_as_bearer_and_a_refusal_is_not_retried():
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"detail": "missing or wrong token"})

    http = httpx.Client(
        base_url="http://scorer",
        transport=httpx.MockTransport(handler),
        headers={"Authorization": "Bearer tok"},
    )
    wc = WeightsClient("http://scorer", "r", wait_seconds=30, client=http, sleep=lambda _: None)
    with pytest.raises(Unauthorized, match="scorer_token"):
        wc.wait_for(4)
    assert seen == ["Bearer tok"]
    built = WeightsClient("http://scorer", "r", wait_seconds=1, token="abc")
    assert built.api.http.headers["authorization"] == "Bearer abc"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.ConnectError("refused"),
        (200, "<html>a proxy's page</html>", {}),  # not the scorer's body
        (200, {"run_id": "r"}, {}),  # a scorer of another version
        (404, {"detail": "Not Found"}, {}),  # one without the route
        (403, {"detail": "the run belongs to another scorer instance"}, {}),
    ],
)
def test_telling_the_scorer_the_run_ended_never_fails_the_run(answer, caplog):
    wc, seen, _ = client([answer])
    with caplog.at_level(logging.WARNING):
        wc.end("finished", "trained 12 steps")
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/v1/runs/r/end")]
    assert "could not tell the scorer at http://scorer that run r finished" in caplog.text


def test_the_runs_end_carries_the_runs_own_token():
    """A scorer without a token takes a run's end only with that run's token."""
    ended = {"detail": "ended"}
    wc, seen, _ = client([(200, ended, {}), (200, ended, {})])
    wc.end("finished")  # registration has not told it the run's token
    wc.run_token = "ab" * 16
    wc.end("failed", "OOM")
    assert [r.headers.get("x-run-token") for r in seen] == [None, "ab" * 16]
