"""The trainer's scorer client: one object for ZeroMQ and REST, and on_scorer_failure."""

import logging

import pytest
import torch

from common.wire.curve import create_keys
from common.wire.errors import RunMismatch, ScorerUnavailable
from common.wire.protocol import ack
from delta_loss_devtools.fake_scorer import FakeScorer
from delta_loss_devtools.scorer_process import free_port
from trainer_svc.config.train_config import TrainConfig
from trainer_svc.scorer.client import (
    RemoteScorer,
    ScorerClient,
    scorer_failed,
    warn_cleartext_token,
)
from trainer_svc.scorer.outage import PROBE_SECONDS
from trainer_svc.scorer.publisher import CheckpointUpload
from trainer_svc.scorer.retry import ScorerFailure
from trainer_svc.training.records import JsonlRecord, read_jsonl
from trainer_svc.training.sampler import SelectionPlan
from trainer_svc.training.schedule import Schedule
from trainer_svc.training.updates import UpdateCoordinator


def remote(zmq_url, **kw):
    return RemoteScorer(
        zmq_url=zmq_url, http_url="http://127.0.0.1:9", run_id="run-1", wait_seconds=10, **kw
    )


def test_the_real_and_the_fake_scorer_are_scorer_clients():
    scorer = remote("tcp://127.0.0.1:9")
    assert isinstance(scorer, ScorerClient) and isinstance(FakeScorer(4), ScorerClient)
    scorer.close()


def test_remote_scorer_registers_and_sends_over_one_socket(router, tiny_hello):
    server = router(lambda req: ack(status="registered" if len(server.requests) == 1 else "queued"))
    scorer = remote(server.url)
    assert scorer.register(tiny_hello)["status"] == "registered"
    tensors = {"w": torch.ones(2)}
    reply = scorer.send_checkpoint(CheckpointUpload("run-1", 3, 1, "full", tensors))
    scorer.close()
    assert reply["status"] == "queued"
    assert [type(r).__name__ for r in server.requests] == ["Hello", "ReceivedCheckpoint"]


def test_registering_gives_the_runs_token_to_its_end_report(router, tiny_hello):
    server = router(lambda req: ack(status="registered"))
    scorer = remote(server.url)
    assert scorer.weights.run_token is None
    hello = tiny_hello.model_copy(update={"run_token": "cd" * 16})
    scorer.register(hello)
    scorer.close()
    assert scorer.weights.run_token == "cd" * 16  # sent with the run's end (POST /end)


def test_registration_stops_waiting_when_a_stop_is_requested(router, tiny_hello):
    def no_pause(seconds):
        pytest.fail("paused for another attempt after a stop request")

    server = router(lambda req: None)
    scorer = remote(server.url, stop_requested=lambda: True, sleep=no_pause)
    scorer.publisher.reply_timeout = 0.1  # the first reply wait, so the test is quick
    with pytest.raises(ScorerFailure, match=f"SIGTERM while waiting for a reply .* {server.url}"):
        scorer.register(tiny_hello)
    scorer.close()
    assert len(server.requests) <= 1  # one attempt (it may not have arrived when it gave up)


def test_from_config_takes_the_addresses_token_and_curve_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORER_TOKEN", "tok")
    _, secret = create_keys(tmp_path, "trainer")
    server_public, _ = create_keys(tmp_path, "scorer")
    cfg = TrainConfig(
        model_name_or_path="m",
        dataset="d.json",
        output_dir=str(tmp_path / "out"),
        scorer_zmq_url="tcp://10.0.0.1:6000",
        scorer_http_url="http://10.0.0.1:9000/",
        scorer_wait_seconds=7,
        scorer_curve_secret_key_file=str(secret),
        scorer_curve_server_key_file=str(server_public),
    )
    scorer = RemoteScorer.from_config(cfg, "run-9")
    assert scorer.publisher.url == "tcp://10.0.0.1:6000" and scorer.publisher.token == "tok"
    assert scorer.publisher.curve is not None
    assert scorer.publisher.retry.wait_seconds == 7 == scorer.weights.retry.wait_seconds
    assert scorer.weights.base_url == "http://10.0.0.1:9000" and scorer.weights.run_id == "run-9"
    assert scorer.weights.api.http.headers["authorization"] == "Bearer tok"
    scorer.close()


def test_on_scorer_failure_fail_stops_with_what_failed_and_the_way_on():
    error = ScorerUnavailable("gave up waiting for X: check Y")
    with pytest.raises(ScorerFailure) as info:
        scorer_failed("fail", "registering run r", error, fallback="training goes on")
    assert str(info.value) == (
        "registering run r failed: gave up waiting for X: check Y "
        "(set on_scorer_failure: uniform to continue without the scorer)"
    )
    assert info.value.__cause__ is error


def test_on_scorer_failure_uniform_logs_loudly_and_goes_on(caplog):
    error = RunMismatch("fingerprint differs")
    with caplog.at_level(logging.ERROR):
        scorer_failed("uniform", "update 2 at step 4", error, fallback="UNIFORM weights")
    assert caplog.messages == [
        "!!! SCORER FAILURE: update 2 at step 4 failed: fingerprint differs -- UNIFORM weights "
        "(on_scorer_failure: uniform)"
    ]


def test_a_scorer_down_at_free_ports_is_waited_for_once_then_only_probed(tmp_path, monkeypatch):
    """on_scorer_failure: uniform against nothing listening: the first update waits out
    scorer_wait_seconds; the later ones only ask /healthz, once each, and send nothing."""
    pauses = []
    scorer = RemoteScorer(
        zmq_url=f"tcp://127.0.0.1:{free_port()}",
        http_url=f"http://127.0.0.1:{free_port()}",
        run_id="run-1",
        wait_seconds=0.2,
        sleep=pauses.append,
    )
    sends, probes = [], []
    send, ping = scorer.publisher._upload, scorer.weights.ping
    monkeypatch.setattr(scorer.publisher, "_upload", lambda *a: sends.append(a) or send(*a))
    monkeypatch.setattr(scorer.weights, "ping", lambda s: probes.append(s) or ping(s))
    schedule = Schedule.build(warmup_step=1, update_step=1, update_times=3, batch=1, epochs=1)
    coord = UpdateCoordinator(
        run_id="run-1",
        kind="lora",
        plan=SelectionPlan(schedule, 4),
        scorer=scorer,
        record=JsonlRecord(tmp_path / "s.jsonl"),
        on_failure="uniform",
    )
    first, *later = schedule.updates()
    coord.run_update(first, lambda: {"x": torch.zeros(1)})
    attempts, waited = len(sends), list(pauses)
    assert attempts >= 1 and probes == []
    for update in later:
        coord.run_update(update, lambda: {"x": torch.zeros(1)})
    scorer.close()
    assert (len(sends), pauses, probes) == (attempts, waited, [PROBE_SECONDS] * 2)
    rows = read_jsonl(tmp_path / "s.jsonl")
    assert [r["failure_code"] for r in rows] == ["timeout", "scorer_down", "scorer_down"]
    assert all(r["source"] == "uniform_fallback" for r in rows)


@pytest.mark.parametrize(
    "http_url, zmq_url, curve, warned",
    [
        ("http://127.0.0.1:8000", "tcp://127.0.0.1:5555", False, []),
        ("https://scorer:8000", "tcp://scorer:5555", True, []),
        ("http://scorer:8000", "tcp://scorer:5555", True, ["plain HTTP"]),
        ("https://scorer:8000", "tcp://10.0.0.2:5555", False, ["PLAIN"]),
        ("http://10.0.0.2:8000", "tcp://10.0.0.2:5555", False, ["plain HTTP", "PLAIN"]),
    ],
)
def test_a_token_that_would_cross_a_network_in_clear_is_warned_of(
    caplog, http_url, zmq_url, curve, warned
):
    with caplog.at_level(logging.WARNING):
        warn_cleartext_token(http_url, zmq_url, curve=curve)
    assert len(caplog.records) == len(warned)
    for record, words in zip(caplog.records, warned, strict=True):
        assert words in record.getMessage()
