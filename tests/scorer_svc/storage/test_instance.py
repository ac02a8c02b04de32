"""Scorers sharing one database: each has a name that survives restarts, no two live scorers
share a data_dir or a name, and each touches only the runs it registered."""

import json
import threading

import numpy as np
import pytest
from sqlalchemy import func, select, text

from common.wire.protocol import encode_checkpoint, encode_hello
from delta_loss_devtools.waiting import wait_until
from scorer_svc.config import Settings, SettingsError, load_settings
from scorer_svc.intake.server import Intake
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.worker import Worker
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.instance import (
    InstanceError,
    InstanceInUse,
    InstanceLock,
    check_instance_free,
)
from scorer_svc.storage.tables import RECEIVED, SCORING, CheckpointRow, Loss, now
from tests.support.data import write_samples
from tests.support.scorer import intake_upload, lora_checkpoints, make_hello, until_registered
from tests.support.worker_parts import worker_parts


def name_of(settings: Settings) -> str:
    lock = InstanceLock(settings)
    lock.release()
    return lock.name


def test_a_name_made_at_first_start_is_kept_in_the_data_dir(tmp_path, caplog):
    settings = Settings(data_dir=tmp_path / "scorer")
    first = name_of(settings)
    assert first and first == name_of(settings)  # the same scorer after a restart
    assert (tmp_path / "scorer" / "instance_id").read_text().strip() == first
    assert name_of(Settings(data_dir=tmp_path / "other")) != first
    named = Settings(data_dir=tmp_path / "scorer", instance_id="gpu-box-1")
    assert name_of(named) == "gpu-box-1"  # the setting wins, is kept, and the change logged
    assert f"served as instance {first}, now as gpu-box-1" in caplog.text
    assert name_of(settings) == "gpu-box-1"


def test_a_damaged_name_file_is_named_at_start(tmp_path):
    (tmp_path / "instance_id").write_text("not a name!\n")
    with pytest.raises(InstanceError, match="not an instance name"):
        InstanceLock(Settings(data_dir=tmp_path))
    InstanceLock(Settings(data_dir=tmp_path, instance_id="fixed")).release()  # lock let go


@pytest.mark.parametrize("bad", ["", "-lead", "has space", "x" * 65, "a/b"])
def test_a_bad_instance_id_is_named_at_start(bad):
    with pytest.raises(SettingsError, match="instance_id"):
        load_settings({"instance_id": bad})


def test_two_scorers_cannot_share_a_data_dir(tmp_path):
    lock = InstanceLock(Settings(data_dir=tmp_path / "scorer", instance_id="a"))
    with pytest.raises(InstanceInUse, match="another scorer is running on the data_dir"):
        InstanceLock(Settings(data_dir=tmp_path / "scorer", instance_id="b"))
    with pytest.raises(InstanceInUse):
        check_instance_free(Settings(data_dir=tmp_path / "scorer"))
    lock.release()
    InstanceLock(
        Settings(data_dir=tmp_path / "scorer", instance_id="b")
    ).release()  # free once the first has gone
    check_instance_free(Settings(data_dir=tmp_path / "scorer"))


def test_two_scorers_cannot_serve_under_one_name_on_postgresql(tmp_path, postgres_cluster):
    url = postgres_cluster.url()
    engine = make_engine(url)
    first = InstanceLock(Settings(data_dir=tmp_path / "one", instance_id="shared-name"))
    first.hold_name(engine)
    second = InstanceLock(Settings(data_dir=tmp_path / "two", instance_id="shared-name"))
    with pytest.raises(InstanceInUse, match="another scorer is serving as instance 'shared-name'"):
        second.hold_name(engine)
    InstanceLock(
        Settings(data_dir=tmp_path / "two", instance_id="shared-name")
    ).release()  # its data_dir lock was let go
    other = InstanceLock(Settings(data_dir=tmp_path / "three", instance_id="another-name"))
    other.hold_name(engine)  # another name is free
    settings = Settings(data_dir=tmp_path / "four", instance_id="shared-name", database_url=url)
    with pytest.raises(InstanceInUse):
        check_instance_free(settings)
    first.release()
    check_instance_free(settings)  # the name is free once its scorer has gone
    other.release()
    engine.dispose()


@pytest.fixture
def two_scorers(tiny_model, tmp_path, database_url):
    """Two scorers' intakes on one database; the first has registered run-a and queued its
    first checkpoint."""
    dataset = write_samples(tmp_path / "train.json", 10)
    parts, engines = [], []
    for name in ("first", "second"):
        settings = Settings(data_dir=tmp_path / name, device="cpu", database_url=database_url)
        engines.append(make_engine(settings.resolved_database_url))
        sessions = make_sessionmaker(engines[-1])
        registry = Registry(settings)
        intake = Intake(settings, sessions, registry, on_queued=lambda: None, instance=name)
        parts.append((settings, sessions, registry, intake))
    intake = parts[0][3]
    hello = make_hello(tiny_model, dataset, run_id="run-a")
    assert until_registered(lambda: _ask(intake, hello))["status"] == "registered"
    frames = _checkpoint("run-a", tiny_model)
    assert intake_upload(intake, frames)["status"] == "queued"
    yield parts, hello, dataset
    for engine in engines:
        engine.dispose()


def _ask(intake, hello) -> dict:
    return json.loads(intake.handle(encode_hello(hello))[0])


def _checkpoint(run_id, tiny_model, step=3):
    tensors = lora_checkpoints(tiny_model, 1)[0]
    return encode_checkpoint(run_id=run_id, step=step, update_index=1, kind="lora", tensors=tensors)


def test_a_scorer_refuses_another_scorers_run(two_scorers, tiny_model):
    parts, hello, _ = two_scorers
    other = parts[1][3]
    reply = _ask(other, hello)
    assert reply["code"] == "mismatch"
    assert "belongs to the scorer instance 'first'" in reply["reason"]
    assert "send this run's checkpoints to that scorer" in reply["reason"]
    reply = intake_upload(other, _checkpoint("run-a", tiny_model, step=5))
    assert reply["code"] == "mismatch" and "'first'" in reply["reason"]
    with parts[0][1]() as session:
        run = run_store.get_run(session, run_id="run-a")
        assert run.instance == "first"
        assert [c.step for c in checkpoint_store.list_checkpoints(session, run=run)] == [3]
    assert list((parts[1][0].data_dir).glob("**/*.safetensors")) == []


def _worker(part, name):
    settings, sessions, registry, _ = part
    return Worker(
        sessions, registry, failures=UnrecordedFailures(), keep_checkpoints=False, instance=name,
        **worker_parts(),
    )  # fmt: skip


def test_a_worker_never_takes_another_scorers_checkpoint(two_scorers):
    parts, _, _ = two_scorers
    sessions = parts[0][1]
    with sessions() as session:
        path = session.scalar(select(CheckpointRow)).path
    assert _worker(parts[1], "second").run_once() is False  # nothing of its own to score
    with sessions() as session:
        checkpoint = session.scalar(select(CheckpointRow))
        assert (checkpoint.status, checkpoint.error) == (RECEIVED, None)
    assert _worker(parts[0], "first").run_once() is True  # its owner scores it
    with sessions() as session:
        assert session.scalar(select(CheckpointRow)).status == "scored"
    assert not __import__("pathlib").Path(path).exists()


def test_a_scorer_restarted_under_its_name_takes_its_runs_back(two_scorers, tiny_model):
    parts, hello, _ = two_scorers
    settings, sessions, _, _ = parts[0]
    again = Intake(settings, sessions, Registry(settings), on_queued=lambda: None, instance="first")
    assert _ask(again, hello)["status"] == "already_registered"
    assert _worker(parts[0], "first").run_once() is True


def test_of_two_claims_of_one_checkpoint_one_wins(two_scorers):
    parts, _, _ = two_scorers
    sessions = parts[0][1]
    with sessions() as one, sessions() as other:
        ((checkpoint_id, _),) = checkpoint_store.pending(one, instance="first")
        assert checkpoint_store.claim(other, checkpoint_id=checkpoint_id, instance="second") is None
        won = checkpoint_store.claim(one, checkpoint_id=checkpoint_id, instance="first")
        assert won is not None and won.status == SCORING
        assert checkpoint_store.claim(other, checkpoint_id=checkpoint_id, instance="first") is None


def test_a_checkpoint_whose_run_is_deleted_while_scored_stores_nothing(two_scorers):
    parts, _, _ = two_scorers
    sessions = parts[0][1]
    with sessions() as session:
        ((checkpoint_id, _),) = checkpoint_store.pending(session, instance="first")
        checkpoint = checkpoint_store.claim(session, checkpoint_id=checkpoint_id, instance="first")
        run = run_store.get_run(session, run_id="run-a")
        assert run_store.delete_run(session, run=run, keep_pending=False) is not None  # --force
        with pytest.raises(checkpoint_store.CheckpointGone):
            checkpoint_store.store_scores(
                session, checkpoint=checkpoint, losses=np.ones(10), window=None, seconds=1.0
            )
        assert session.scalar(select(func.count()).select_from(Loss)) == 0


def test_a_checkpoint_queued_while_its_run_is_deleted_stops_the_delete(two_scorers, database_url):
    """The intake adds a checkpoint row (not yet committed) as the run is deleted: the delete
    waits for it, then finds it queued and deletes nothing."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: the delete cannot start meanwhile")
    parts, _, _ = two_scorers
    sessions = parts[0][1]
    with sessions() as session:  # the first checkpoint scored: the run could be deleted
        ((checkpoint_id, _),) = checkpoint_store.pending(session, instance="first")
        session.get(CheckpointRow, checkpoint_id).status = "scored"
        session.commit()
    outcome = {}

    def delete() -> None:
        with sessions() as session:
            run = run_store.get_run(session, run_id="run-a")
            outcome["removed"] = run_store.delete_run(session, run=run)

    with sessions() as intake, sessions() as watcher:
        run = run_store.get_run(intake, run_id="run-a")
        received = checkpoint_store.Received(9, 2, "lora", "0" * 64, "step-9", 10)
        intake.add(CheckpointRow(run_pk=run.id, **received.__dict__, status=RECEIVED,
                                 received_at=now()))  # fmt: skip
        intake.flush()  # the row exists in the intake's transaction, its run row share-locked
        deleting = threading.Thread(target=delete)
        deleting.start()

        def delete_waits() -> bool:
            waiting = watcher.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            )
            watcher.rollback()  # a transaction sees one snapshot of pg_stat_activity
            return bool(waiting)

        wait_until(delete_waits, "the delete to wait for the intake's transaction")
        intake.commit()
    deleting.join()
    assert outcome["removed"] is None
    with sessions() as session:
        run = run_store.get_run(session, run_id="run-a")
        assert [c.step for c in checkpoint_store.list_checkpoints(session, run=run)] == [3, 9]
