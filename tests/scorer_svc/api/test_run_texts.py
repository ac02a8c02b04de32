"""RunTexts, the service behind a sample's text: a run's dataset read once however many
requests ask for it at the same time, what it read kept, what it refused not read again."""

import threading
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from common.data.datasets import Row
from common.data.samples import Sample
from delta_loss_devtools.waiting import wait_until
from scorer_svc.api.run_texts import RunTexts
from scorer_svc.config import Settings
from scorer_svc.scoring.run_dataset import DatasetReader


def a_run(run_id: int = 1, fingerprint: str = "f" * 64) -> SimpleNamespace:
    return SimpleNamespace(
        id=run_id, created_at=datetime(2024, 1, 1), fingerprint=fingerprint, run_id=f"run-{run_id}"
    )


@pytest.fixture
def texts(tmp_path: Path) -> RunTexts:
    return RunTexts(DatasetReader.of(Settings(data_dir=tmp_path)))


def counting(
    texts: RunTexts, monkeypatch, answer, gate: threading.Event | None = None
) -> list[int]:
    """The runs texts.read is called for; it waits for `gate` (when given), then answers (or
    raises)."""
    calls: list[int] = []

    def read(run):
        calls.append(run.id)
        if gate is not None:
            assert gate.wait(300), "the test never opened the gate"
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(texts, "read", read)
    return calls


ROWS = (Row(Sample(system="", turns=(("hi", "hello"),)), {"group": "a"}),)


def test_requests_at_the_same_time_read_a_dataset_once(texts, monkeypatch):
    gate = threading.Event()
    calls = counting(texts, monkeypatch, ROWS, gate)
    got = []
    asking = []

    def ask() -> None:
        asking.append(1)
        got.append(texts.rows(a_run()))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    # every request is made while the first read is held open
    wait_until(lambda: len(asking) == 4 and calls == [1], "four requests and one read")
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [1] and got == [ROWS] * 4
    assert texts.rows(a_run()) is ROWS and calls == [1]  # kept
    texts.rows(a_run(fingerprint="e" * 64))  # the same run with another fingerprint: read
    assert calls == [1, 1]


def test_a_refusal_is_answered_again_without_reading(texts, monkeypatch):
    refused = HTTPException(409, detail="changed")
    calls = counting(texts, monkeypatch, refused)
    for _ in range(3):
        with pytest.raises(HTTPException) as caught:
            texts.rows(a_run())
        assert caught.value is refused
    assert calls == [1]
