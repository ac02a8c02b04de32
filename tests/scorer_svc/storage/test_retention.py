"""Deleting a run: over REST with the scorer running, or offline with `scorer-svc runs delete`;
its rows and files go, other runs stay whole, and nothing goes while its trainer is sending."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from scorer_svc.api.state import ApiState
from scorer_svc.cli import main
from scorer_svc.config import Settings
from scorer_svc.main import create_app
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.checkpoint_files import checkpoint_path
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.instance import InstanceLock
from tests.support.scorer import stored_run_config

TOKEN = "retention-token-0123456789abcdef"
N = 5


def add_run(
    sessions, data_dir: Path, run_id: str, *, instance="here", steps=(2, 4), pending=(), n=N
):
    """A run with scored checkpoints at steps (their files kept on disk) and pending ones."""
    with sessions() as session:
        config = stored_run_config(run_id, n)
        run = run_store.create_run(session, config=config, n_no_labels=0, instance=instance)
        for k, step in enumerate([*steps, *pending], start=1):
            path = checkpoint_path(data_dir, run_id, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"tensors")
            received = checkpoint_store.Received(step, k, "lora", "0" * 64, str(path), 7)
            checkpoint = checkpoint_store.add_checkpoint(session, run=run, received=received)
            if step in steps:
                losses = np.arange(n, dtype=float) + step
                checkpoint_store.store_scores(
                    session, checkpoint=checkpoint, losses=losses, window=None, seconds=1.0
                )
    return checkpoint_path(data_dir, run_id, 0).parent


@pytest.fixture
def served(tmp_path, database_url):
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, token=TOKEN)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    state = ApiState(settings, sessions, UnrecordedFailures(), instance="here")
    with TestClient(create_app(settings, state)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, sessions, settings.data_dir
    engine.dispose()


def test_a_run_is_deleted_with_its_files_and_no_other(served):
    client, sessions, data_dir = served
    gone = add_run(sessions, data_dir, "old")
    kept = add_run(sessions, data_dir, "kept")
    assert client.get("/v1/runs/old/weights", params={"step": 2}).status_code == 200
    response = client.delete("/v1/runs/old")
    assert response.status_code == 200, response.text
    assert response.json() == {"run_id": "old", "checkpoints": 2, "losses": 2 * N, "files": 2}
    assert not gone.exists()
    assert client.get("/v1/runs/old").status_code == 404
    assert [r["run_id"] for r in client.get("/v1/runs").json()["runs"]] == ["kept"]
    assert len(list(kept.iterdir())) == 2
    losses = client.get("/v1/runs/kept/losses", params={"step": 4}).json()
    assert losses["losses"] == [4.0, 5.0, 6.0, 7.0, 8.0]
    add_run(sessions, data_dir, "old", steps=(6,))  # the id is free again: a new history
    assert client.get("/v1/runs/old/weights", params={"step": 2}).status_code == 404
    assert client.get("/v1/runs/old/losses", params={"step": 6}).json()["losses"][0] == 6.0


def test_a_run_registered_again_after_deletion_gets_its_own_weights(served):
    client, sessions, data_dir = served
    octet = {"Accept": "application/octet-stream"}
    add_run(sessions, data_dir, "again")
    first = client.get("/v1/runs/again/weights", params={"step": 2}, headers=octet)
    assert len(np.frombuffer(first.content, "<f4")) == N  # and cached
    assert client.delete("/v1/runs/again").status_code == 200
    add_run(sessions, data_dir, "again", n=3)  # SQLite may give it the same row number
    second = client.get("/v1/runs/again/weights", params={"step": 2}, headers=octet)
    assert len(np.frombuffer(second.content, "<f4")) == 3


def test_a_run_still_sending_is_not_deleted(served):
    client, sessions, data_dir = served
    files = add_run(sessions, data_dir, "busy", pending=(6,))
    response = client.delete("/v1/runs/busy")
    assert response.status_code == 409
    assert "queued or being scored" in response.json()["detail"]
    assert len(list(files.iterdir())) == 3
    assert len(client.get("/v1/runs/busy/checkpoints").json()["checkpoints"]) == 3


def test_another_scorers_run_is_read_only_here(served):
    client, sessions, data_dir = served
    add_run(sessions, data_dir, "theirs", instance="elsewhere")
    response = client.delete("/v1/runs/theirs")
    assert response.status_code == 403
    assert "belongs to the scorer instance 'elsewhere'" in response.json()["detail"]
    assert client.get("/v1/runs/theirs/losses", params={"step": 2}).status_code == 200


def test_deleting_needs_the_token_and_a_known_run(served):
    client, sessions, data_dir = served
    add_run(sessions, data_dir, "run")
    assert (
        client.delete("/v1/runs/run", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert client.delete("/v1/runs/nope").status_code == 404
    assert client.get("/v1/runs/run").status_code == 200


@pytest.fixture
def offline(tmp_path):
    """A stopped scorer's data_dir and SQLite database, and its --config file."""
    data_dir = tmp_path / "data"
    config = tmp_path / "scorer.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir), "instance_id": "here"}))
    engine = make_engine(Settings(data_dir=data_dir).resolved_database_url)
    yield make_sessionmaker(engine), data_dir, config
    engine.dispose()


def test_the_cli_deletes_a_run_offline(offline, capsys):
    sessions, data_dir, config = offline
    files = add_run(sessions, data_dir, "old")
    add_run(sessions, data_dir, "busy", pending=(6,))
    assert main(["runs", "--config", str(config), "delete", "old"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"deleted run old: 2 checkpoints, {2 * N} losses, 2 checkpoint files"
    )
    assert not files.exists()
    assert main(["runs", "--config", str(config), "delete", "busy"]) == 2
    err = capsys.readouterr().err
    assert "queued or being scored" in err and "--force" in err
    assert main(["runs", "--config", str(config), "delete", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["runs", "--config", str(config), "list"]) == 0
    assert capsys.readouterr().out.split() == ["busy", "instance", "here", "3", "checkpoints"]
    assert main(["runs", "--config", str(config), "delete", "busy", "--force"]) == 0
    with sessions() as session:
        assert run_store.list_runs(session) == []


def test_the_cli_refuses_while_the_scorer_runs(offline, capsys):
    sessions, data_dir, config = offline
    add_run(sessions, data_dir, "run")
    running = InstanceLock(Settings(data_dir=data_dir, instance_id="here"))
    try:
        assert main(["runs", "--config", str(config), "delete", "run"]) == 2
    finally:
        running.release()
    err = capsys.readouterr().err
    assert "is running: use its REST API" in err and len(err.strip().splitlines()) == 1
    with sessions() as session:
        assert json.loads(json.dumps([r.run_id for r in run_store.list_runs(session)])) == ["run"]


def test_the_cli_leaves_a_run_whose_scorer_is_serving_it(tmp_path, postgres_cluster, capsys):
    url = postgres_cluster.url()
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    data_dir = tmp_path / "data"
    files = add_run(sessions, tmp_path / "elsewhere", "theirs", instance="elsewhere")
    config = tmp_path / "scorer.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir), "database_url": url}))
    data_dir.mkdir()
    owner = InstanceLock(Settings(data_dir=tmp_path / "owner", instance_id="elsewhere"))
    owner.hold_name(engine)  # the owner is live
    try:
        argv = ["runs", "--config", str(config), "delete", "theirs", "--force"]
        assert main(argv) == 2
        assert "which is running" in capsys.readouterr().err
    finally:
        owner.release()
    assert main(argv) == 0  # once it has stopped, --force deletes its rows; its files stay
    assert "0 checkpoint files" in capsys.readouterr().out
    assert len(list(files.iterdir())) == 2
    engine.dispose()
