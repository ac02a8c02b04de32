"""Registering runs: a run id belongs to the training run that registered it (a resume, same
token, comes back; another run under the same id is refused before it reads that run's
windows); runs are prepared off the intake, which goes on answering everyone else; what runs
hold in memory stays within its budget."""

import json
import time

import pytest
from transformers import AutoTokenizer

from common.data.datasets import DatasetSpec, absolute_spec, load_samples, split_validation
from common.data.tokenization import encode_dataset
from common.model_spec import ModelSpec
from common.wire.curve import create_keys
from common.wire.hello import build_hello
from common.wire.protocol import Hello, encode_hello
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.run_data import RunDataStore
from scorer_svc.scoring.run_dataset import DatasetReader
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from tests.support.data import write_samples
from tests.support.scorer import (
    LORA,
    SETTINGS,
    lora_checkpoints,
    make_hello,
    register,
    send_checkpoint,
    until_registered,
    zmq_request,
)

TOKEN, OTHER = "a" * 32, "b" * 32


@pytest.fixture
def intake(tmp_path):
    config = Settings(data_dir=tmp_path / "scorer", device="cpu")
    sessions = make_sessionmaker(make_engine(config.resolved_database_url))
    return Intake(config, sessions, Registry(config), on_queued=lambda: None, instance="here")


def ask(intake, hello) -> dict:
    return until_registered(lambda: json.loads(intake.handle(encode_hello(hello))[0]))


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
        assert run_store.get_run(session, run_id="run-a").config["run_token"] == TOKEN


def test_a_resumed_run_is_training_again(intake, tiny_model, tmp_path):
    data = write_samples(tmp_path / "train.json", 8)
    ask(intake, make_hello(tiny_model, data, run_token=TOKEN))
    with intake.sessions() as session:
        run_store.end_run(
            session, run=run_store.get_run(session, run_id="run-a"), status="failed", detail="x"
        )
    assert ask(intake, make_hello(tiny_model, data, run_token=TOKEN))["status"] == (
        "already_registered"
    )
    with intake.sessions() as session:
        run = run_store.get_run(session, run_id="run-a")
        assert (run.end_status, run.end_detail, run.ended_at) == (None, None, None)
        run_store.end_run(session, run=run, status="finished", detail=None)
    refused = ask(intake, make_hello(tiny_model, data, run_token=OTHER))
    assert refused["code"] == "mismatch"  # another training run does not reopen it
    with intake.sessions() as session:
        assert run_store.get_run(session, run_id="run-a").end_status == "finished"


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
    intake = Intake(config, sessions, Registry(config), on_queued=lambda: None, instance="here")
    reply = json.loads(intake.handle([b"[" * 100_000 + b"]" * 100_000])[0])
    assert reply["code"] == code, reply


def test_a_slow_registration_holds_up_no_other_trainer(served, tiny_model, tmp_path):
    url, release, _, _ = served
    data = write_samples(tmp_path / "d.json", 6)
    slow = make_hello(tiny_model, data, run_id="slow")
    assert zmq_request(url, encode_hello(slow))["status"] == "registering"  # answered at once
    assert register(url, make_hello(tiny_model, data, run_id="fast"))["status"] == "registered"
    started = time.perf_counter()
    again = zmq_request(url, encode_hello(make_hello(tiny_model, data, run_id="fast")))
    latency_ms = (time.perf_counter() - started) * 1000
    assert again["status"] == "already_registered" and not release.is_set()
    print(f"\nanother trainer's hello answered in {latency_ms:.1f} ms during a held registration")
    checkpoint = send_checkpoint(url, "fast", 2, 1, lora_checkpoints(tiny_model, 1)[0])
    assert checkpoint["status"] == "queued" and not release.is_set()
    assert zmq_request(url, encode_hello(slow))["status"] == "registering"
    release.set()
    assert register(url, slow)["status"] == "registered"


def test_a_run_being_registered_is_not_taken_over_by_other_settings(served, tiny_model, tmp_path):
    url, _, _, _ = served
    data = write_samples(tmp_path / "d.json", 6)
    assert (
        zmq_request(url, encode_hello(make_hello(tiny_model, data, run_id="slow")))["status"]
        == "registering"
    )
    other = make_hello(tiny_model, data, run_id="slow", window_size=0.5)
    reply = zmq_request(url, encode_hello(other))
    assert reply["code"] == "mismatch" and "being registered" in reply["reason"]


def test_too_many_registrations_at_once_are_told_to_come_back(served, tiny_model, tmp_path):
    url, release, intake, _ = served
    intake.registrations.max_pending = 3
    data = write_samples(tmp_path / "d.json", 6)
    for i in range(3):
        hello = make_hello(tiny_model, data, run_id=f"slow-{i}")
        assert zmq_request(url, encode_hello(hello))["status"] == "registering"
    reply = zmq_request(url, encode_hello(make_hello(tiny_model, data, run_id="slow-3")))
    assert reply["code"] == "busy" and "again" in reply["reason"]
    release.set()
    for i in range(4):  # the prepared ones make room once claimed or done
        assert register(url, make_hello(tiny_model, data, run_id=f"slow-{i}"))["status"] == (
            "registered"
        )


def test_runs_data_stays_within_its_budget_and_comes_back_when_needed(tmp_path, tiny_model):
    data = write_samples(tmp_path / "d.json", 12)
    probe_settings = Settings(data_dir=tmp_path / "probe", device="cpu")
    probe = RunDataStore(probe_settings, DatasetReader.of(probe_settings))
    one_run = probe.prepare(make_hello(tiny_model, data, run_id="probe")).nbytes
    config = Settings(
        data_dir=tmp_path / "scorer", device="cpu", max_run_data_bytes=int(2.5 * one_run)
    )
    runs = RunDataStore(config, DatasetReader.of(config))
    tokenized = []
    tokenize = runs._tokenize

    def counted(hello):
        tokenized.append(hello.run_id)
        return tokenize(hello)

    runs._tokenize = counted  # type: ignore[method-assign]
    hellos = [make_hello(tiny_model, data, run_id=f"run-{i}") for i in range(10)]
    for hello in hellos:
        runs.prepare(hello)
    assert runs.run_data_bytes <= config.max_run_data_bytes
    assert runs.run_data_bytes == 2 * one_run  # the two most recent
    runs.prepare(hellos[-1])  # held: not tokenized again
    assert tokenized == [h.run_id for h in hellos]
    again = runs.prepare(hellos[0])  # dropped: tokenized again, checked again
    assert tokenized[-1] == "run-0" and again.nbytes == one_run


def test_the_scorer_reads_and_splits_the_datasets_as_the_trainer_does(intake, tiny_model, tmp_path):
    """A comma list of a dataset_info.json name (sharegpt, with a system prompt) and a path,
    cut by max_samples, with a validation split held out: the scorer's samples are the
    trainer's, down to the fingerprint; another split seed gives other samples."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    chats = [
        {"conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": str(i)},
            {"from": "human", "value": "Again."}, {"from": "gpt", "value": f"{i} {i}"},
        ]}
        for i in range(12)
    ]  # fmt: skip
    (data_dir / "chats.json").write_text(json.dumps(chats))
    info = {"chats": {"file_name": "chats.json", "formatting": "sharegpt"}}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    alpaca = write_samples(tmp_path / "train.json", 8)
    spec = absolute_spec(DatasetSpec(f"chats,{alpaca}", str(data_dir), max_samples=10))
    samples, _ = split_validation(load_samples(spec), 0.25, seed=7)
    assert len(samples) == 13  # 10 chats and 8 rows, 5 held out
    assert {s.system for s in samples} == {"Be brief.", ""}
    assert {len(s.turns) for s in samples} == {2, 1}  # every assistant turn is trained
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    hello = build_hello(
        run_id="run-split", spec=ModelSpec(str(tiny_model), "lora", LORA), dataset=spec,
        val_size=0.25, split_seed=7, tokenization=SETTINGS,
        encoded=encode_dataset(tokenizer, samples, SETTINGS), window_size=0.2,
        update_times=3, vocab_size=len(tokenizer),
    )  # fmt: skip
    assert ask(intake, hello)["status"] == "registered"
    other = Hello.model_validate({**hello.model_dump(), "run_id": "run-other", "split_seed": 8})
    reply = ask(intake, other)
    assert reply["code"] == "mismatch" and "dataset fingerprint" in reply["reason"]


def test_a_run_whose_model_this_scorer_cannot_build_as_the_trainer_is_refused(
    intake, tiny_model, tmp_path
):
    data = write_samples(tmp_path / "train.json", 8)
    reply = ask(intake, make_hello(tiny_model, data, run_id="run-q", quantization_bit=4))
    assert reply["code"] == "mismatch"
    assert "4-bit quantization (bitsandbytes) needs a CUDA GPU" in reply["reason"]
    hello = make_hello(tiny_model, data, run_id="run-sdpa", attn_implementation="sdpa")
    assert ask(intake, hello)["status"] == "registered"
    model = intake.registry.models.model(hello)  # built with the trainer's attention
    assert model.model.config._attn_implementation == "sdpa"
