"""A real intake on a loopback port, shared by the registration and client-limit tests."""

import threading
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from delta_loss_devtools.scorer_process import free_port
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake, IntakeServer
from scorer_svc.main import MAX_FRAME_BYTES
from scorer_svc.scoring import run_dataset
from scorer_svc.scoring.registry import Registry
from scorer_svc.storage.db import make_engine, make_sessionmaker


class Served(NamedTuple):
    url: str
    release: threading.Event  # set: runs named "slow..." are prepared
    intake: Intake
    tokenized: list[int]  # how many samples each tokenization took


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[Served]:
    """A real intake on a loopback port whose registry prepares the runs named "slow..." only
    once released (inside its own work, as a slow dataset would hold it)."""
    config = Settings(data_dir=tmp_path / "scorer", device="cpu")
    registry = Registry(config)
    release = threading.Event()
    tokenized: list[int] = []
    encode = run_dataset.encode_dataset
    monkeypatch.setattr(
        run_dataset,
        "encode_dataset",
        lambda tokenizer, samples, settings: (
            tokenized.append(len(samples)) or encode(tokenizer, samples, settings)
        ),
    )
    tokenize = registry.runs._tokenize

    def held(hello):
        if hello.run_id.startswith("slow"):
            assert release.wait(300), "never released"
        return tokenize(hello)

    registry.runs._tokenize = held  # type: ignore[method-assign]
    sessions = make_sessionmaker(make_engine(config.resolved_database_url))
    intake = Intake(config, sessions, registry, on_queued=lambda: None, instance="here")
    server = IntakeServer(f"tcp://127.0.0.1:{free_port()}", intake, max_frame_bytes=MAX_FRAME_BYTES)
    server.start()
    yield Served(server.url, release, intake, tokenized)
    release.set()
    server.stop()
