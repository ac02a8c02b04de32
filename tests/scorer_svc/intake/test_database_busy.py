"""PostgreSQL stopped under the intake: a hello, an upload's header and its commit are answered
`busy` at once (the trainer sends them again), with one log line and no traceback, and the
same requests go through once the server is back; the intake never waits out the outage."""

import contextlib
import json
import logging
from collections.abc import Iterator

import pytest

from common.wire.protocol import encode_checkpoint, encode_hello
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake
from scorer_svc.scoring.registry import Registry
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from tests.support.data import write_samples
from tests.support.postgres import PostgresCluster
from tests.support.scorer import intake_upload, lora_checkpoints, make_hello, until_registered

pytestmark = pytest.mark.slow  # a PostgreSQL server of its own, stopped and started


@pytest.fixture
def cluster(request) -> Iterator[PostgresCluster]:
    shared = request.getfixturevalue("postgres_cluster")  # skipped (or failed in CI) alike
    own = PostgresCluster(shared.bindir).start()
    yield own
    with contextlib.suppress(Exception):  # running already
        own.resume()
    own.stop()


def test_the_intake_answers_busy_while_the_database_is_down(cluster, tiny_model, tmp_path, caplog):
    settings = Settings(data_dir=tmp_path / "scorer", device="cpu", database_url=cluster.url())
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    intake = Intake(settings, sessions, Registry(settings), on_queued=lambda: None, instance="i")
    data = write_samples(tmp_path / "d.json", 6)

    def ask(run_id: str) -> dict:
        hello = make_hello(tiny_model, data, run_id=run_id)
        return until_registered(lambda: json.loads(intake.handle(encode_hello(hello))[0]))

    assert ask("run-a")["status"] == "registered"
    tensors = lora_checkpoints(tiny_model, 2)

    def upload(step: int, index: int) -> list:
        return encode_checkpoint(
            run_id="run-a", step=step, update_index=index, kind="lora", tensors=tensors[index - 1]
        )

    cluster.halt()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        hello = json.loads(intake.handle(encode_hello(make_hello(tiny_model, data)))[0])
        header = intake_upload(intake, upload(2, 1))
        # the header went through before the server stopped; the commit finds it stopped
        cluster.resume()
        messages = upload(4, 1)
        for message in messages[:-1]:
            assert intake.handle([bytes(f) for f in message]) is None
        cluster.halt()
        commit = json.loads(intake.handle([bytes(f) for f in messages[-1]])[0])
    for reply in (hello, header, commit):
        assert reply["code"] == "busy" and "database" in reply["reason"], reply
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    refused = [r for r in caplog.records if r.name == "scorer_svc.intake.server"]
    assert refused == []  # the outage is logged once, by the database's status
    cluster.resume()
    assert intake_upload(intake, upload(2, 1))["status"] == "queued"  # sent again
    assert intake_upload(intake, upload(4, 2))["status"] == "queued"
    with sessions() as session:
        run = run_store.get_run(session, run_id="run-a")
        assert run is not None
        assert [c.step for c in checkpoint_store.list_checkpoints(session, run=run)] == [2, 4]
