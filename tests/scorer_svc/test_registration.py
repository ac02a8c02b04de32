"""A run id belongs to the training run that registered it: a resume (same token) comes back,
another run under the same id (another token) is refused before it reads that run's windows."""

import json

import pytest

from common.curve import create_keys
from common.protocol import encode_hello
from scorer_svc import crud
from scorer_svc.config import Settings
from scorer_svc.db import make_engine, make_sessionmaker
from scorer_svc.intake import Intake
from scorer_svc.registry import Registry
from tests.support.data import write_samples
from tests.support.scorer import make_hello

TOKEN, OTHER = "a" * 32, "b" * 32


@pytest.fixture
def intake(tmp_path):
    config = Settings(data_dir=tmp_path / "scorer", device="cpu")
    sessions = make_sessionmaker(make_engine(config.resolved_database_url))
    return Intake(config, sessions, Registry(config), on_queued=lambda: None)


def ask(intake, hello) -> dict:
    return json.loads(intake.handle(encode_hello(hello))[0])


def test_the_same_training_run_comes_back_and_another_is_refused(intake, tiny_model, tmp_path):
    data = write_samples(tmp_path / "train.json", 8)
    assert ask(intake, make_hello(tiny_model, data, run_token=TOKEN))["status"] == "registered"
    again = ask(intake, make_hello(tiny_model, data, run_token=TOKEN))
    assert again["status"] == "already_registered"  # a resume, or a trainer restarted
    for token in (OTHER, None):
        reply = ask(intake, make_hello(tiny_model, data, run_token=token))
        assert reply["code"] == "mismatch"
        assert "run run-a is already registered by another training run" in reply["reason"]
        assert "new run_id" in reply["reason"] and "resume_from_checkpoint" in reply["reason"]
    with intake.sessions() as session:
        assert crud.get_run(session, run_id="run-a").config["run_token"] == TOKEN


def test_a_run_registered_without_a_token_accepts_its_trainer_back(intake, tiny_model, tmp_path):
    data = write_samples(tmp_path / "train.json", 8)
    assert ask(intake, make_hello(tiny_model, data))["status"] == "registered"
    assert ask(intake, make_hello(tiny_model, data, run_token=TOKEN))["status"] == (
        "already_registered"
    )  # registered by a trainer that sent no token: nothing to tell runs apart by


@pytest.mark.parametrize(
    "security, code",
    [
        ({}, "malformed"),
        ({"token": "secret"}, "malformed"),  # the handshake checked the token
        ({"token": "secret", "curve": True}, "unauthorized"),  # each header carries it
    ],
    ids=["open", "token", "token and CURVE"],
)
def test_hostile_json_gets_an_error_reply_not_an_internal_failure(tmp_path, security, code):
    if security.pop("curve", False):
        _, secret = create_keys(tmp_path / "keys", "scorer")
        security.update(curve_secret_key_file=secret, curve_authorized_keys_dir=tmp_path / "keys")
    config = Settings(data_dir=tmp_path / "scorer", device="cpu", **security)
    sessions = make_sessionmaker(make_engine(config.resolved_database_url))
    intake = Intake(config, sessions, Registry(config), on_queued=lambda: None)
    reply = json.loads(intake.handle([b"[" * 100_000 + b"]" * 100_000])[0])
    assert reply["code"] == code, reply
