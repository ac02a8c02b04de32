"""The flags of `scorer-svc serve` come from the settings: one each, with help, but the token."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scorer_svc.cli import build_parser, health_url, probe_health, serve_settings
from scorer_svc.config import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"token"}


@pytest.fixture(autouse=True)
def _offline_mode_stays_here(monkeypatch):
    """main() turns this process offline (HF_HUB_OFFLINE); undone after each test, so the
    tests that follow, and the processes they start, see the environment they were given."""
    import huggingface_hub.constants as hub

    from scorer_svc.security.policy import OFFLINE_VARIABLES

    for name in OFFLINE_VARIABLES:  # setenv records each one's state, absent included
        before = os.environ.get(name)
        monkeypatch.setenv(name, before or "")
        if before is None:
            monkeypatch.delenv(name)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", hub.HF_HUB_OFFLINE)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_setting_is_described():
    undescribed = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undescribed == []


@pytest.mark.slow  # the real command line, in a process of its own
def test_help_lists_every_flag_with_its_description_but_not_the_token():
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "scorer_svc", "serve", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text = " ".join(done.stdout.split())
    for name, field in Settings.model_fields.items():
        if name in SECRETS:
            assert not re.search(rf"{flag(name)}\b(?!-)", text), f"{flag(name)} is offered"
        else:
            assert f"{flag(name)} " in text and field.description in text, name


def test_the_token_is_refused_as_a_flag():
    parser, flags = build_parser()
    args = parser.parse_args(["serve", "--token", "s3cret"])
    with pytest.raises(SettingsError, match="token is not a flag.*SCORER_TOKEN"):
        serve_settings(args, flags)


def test_a_database_password_is_refused_as_a_flag_and_read_from_a_file(tmp_path, monkeypatch):
    """A command line shows in ps: a URL with a password comes from SCORER_DATABASE_URL, the
    --config file or --database-url-file, never a flag (one without a password may be)."""
    parser, flags = build_parser()
    secret = "postgresql://scorer:s3cret@db-host:5432/deltaloss"
    args = parser.parse_args(["serve", "--database-url", secret])
    with pytest.raises(SettingsError, match="password is not a flag.*--database-url-file"):
        serve_settings(args, flags)
    url_file = tmp_path / "database_url"
    url_file.write_text(secret + "\n")
    args = parser.parse_args(["serve", "--database-url-file", str(url_file)])
    settings = serve_settings(args, flags)
    assert (
        settings.resolved_database_url
        == "postgresql+psycopg://scorer:s3cret@db-host:5432/deltaloss"
    )
    assert "s3cret" not in settings.database_for_logs
    monkeypatch.setenv("SCORER_DATABASE_URL", secret)
    args = parser.parse_args(["serve", "--data-dir", str(tmp_path)])
    assert serve_settings(args, flags).database_url == secret
    both = parser.parse_args(["serve", "--database-url-file", str(url_file)])
    with pytest.raises(SettingsError, match="database_url or database_url_file, not both"):
        serve_settings(both, flags)
    url_file.write_text("\n")
    monkeypatch.delenv("SCORER_DATABASE_URL")
    with pytest.raises(SettingsError, match="database_url_file .* is empty"):
        serve_settings(parser.parse_args(["serve", "--database-url-file", str(url_file)]), flags)
    assert serve_settings(parser.parse_args(["serve", "--database-url", "sqlite:///x.db"]), flags)


def test_a_damaged_database_stops_the_scorer_at_start_in_one_line(tmp_path, capsys):
    from scorer_svc.cli import main

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "scorer.db").write_bytes(b"this is not a SQLite database " * 200)
    assert main(["serve", "--data-dir", str(data_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scorer-svc: the database {data_dir / 'scorer.db'} is damaged")
    assert "restore it from a backup" in err and len(err.strip().splitlines()) == 1


def test_an_address_in_use_stops_the_scorer_at_start_in_one_line(tmp_path, capsys):
    import socket

    import zmq

    from delta_loss_devtools.scorer_process import free_port
    from scorer_svc.cli import main

    url = f"tcp://127.0.0.1:{free_port()}"
    taken = zmq.Context.instance().socket(zmq.ROUTER)
    taken.bind(url)
    try:
        argv = ["serve", "--data-dir", str(tmp_path), "--device", "cpu", "--zmq-url", url]
        assert main(argv) == 2
    finally:
        taken.close(0)
    err = capsys.readouterr().err
    assert err.startswith(f"scorer-svc: cannot bind the ZeroMQ address {url}")
    assert "--zmq-url" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as http:
        http.bind(("127.0.0.1", 0))
        http.listen()
        port = http.getsockname()[1]
        free_zmq = f"tcp://127.0.0.1:{free_port()}"
        argv = ["serve", "--data-dir", str(tmp_path), "--zmq-url", free_zmq]
        assert main([*argv, "--http-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scorer-svc: cannot bind the REST address 127.0.0.1:{port}")
    assert "--http-port" in err


@pytest.mark.parametrize(
    "url, words",
    [
        ("postgresql+pg8000://scorer:s3cret@127.0.0.1/runs", "delta-loss-selector[postgres]"),
        ("nosuchdb://scorer:s3cret@127.0.0.1/runs", "not a URL SQLAlchemy can use"),
    ],
    ids=["driver missing", "unknown backend"],
)  # fmt: skip
def test_a_database_url_the_scorer_cannot_use_stops_it_in_one_line(
    tmp_path, capsys, monkeypatch, url, words
):
    from scorer_svc.cli import main

    monkeypatch.setenv("SCORER_DATABASE_URL", url)  # with a password: not a flag
    assert main(["serve", "--data-dir", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scorer-svc: ") and words in err, err
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1


def test_a_bare_postgresql_url_uses_psycopg_3():
    from scorer_svc.config import Settings

    url = Settings(database_url="postgresql://u@h/db").resolved_database_url
    assert url == "postgresql+psycopg://u@h/db"


def test_a_database_server_that_cannot_be_used_stops_the_scorer_in_one_line(
    tmp_path, capsys, monkeypatch, postgres_cluster
):
    from delta_loss_devtools.scorer_process import free_port
    from scorer_svc.cli import main

    closed = f"postgresql://scorer:s3cret-pw@127.0.0.1:{free_port()}/runs"
    missing = f"postgresql://postgres:s3cret-pw@127.0.0.1:{postgres_cluster.port}/no_such_db"
    for url, words in ((closed, "Connection refused"), (missing, "no_such_db")):
        monkeypatch.setenv("SCORER_DATABASE_URL", url)
        assert main(["serve", "--data-dir", str(tmp_path), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("scorer-svc: cannot use the database postgresql+psycopg://"), err
        assert words in err and "***" in err and "s3cret-pw" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_a_second_scorer_on_a_data_dir_stops_at_start_in_one_line(tmp_path, capsys):
    from delta_loss_devtools.scorer_process import free_port
    from scorer_svc.cli import main
    from scorer_svc.storage.instance import InstanceLock

    running = InstanceLock(Settings(data_dir=tmp_path, instance_id="first"))
    ports = ["--http-port", str(free_port()), "--zmq-url", f"tcp://127.0.0.1:{free_port()}"]
    try:
        assert main(["serve", "--data-dir", str(tmp_path), "--device", "cpu", *ports]) == 2
    finally:
        running.release()
    err = capsys.readouterr().err
    assert err.startswith(f"scorer-svc: another scorer is running on the data_dir {tmp_path}")
    assert len(err.strip().splitlines()) == 1


# --- scorer-svc health ---------------------------------------------------------------------


def test_health_url_reaches_a_scorer_bound_everywhere_over_loopback(tmp_path):
    def url(**over) -> str:
        return health_url(Settings(data_dir=tmp_path, http_port=8123, **over))

    assert url(http_host="0.0.0.0") == "http://127.0.0.1:8123/healthz"
    assert url(http_host="::") == "http://[::1]:8123/healthz"
    assert url(http_host="10.1.2.3") == "http://10.1.2.3:8123/healthz"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    assert url(http_host="0.0.0.0", tls_certfile=cert, tls_keyfile=key) == (
        "https://127.0.0.1:8123/healthz"
    )


def test_health_is_false_with_the_scorers_reason_when_its_worker_stopped(tmp_path, monkeypatch):
    from dataclasses import replace

    from scorer_svc.main import create_app
    from tests.scorer_svc.api.test_api import seeded_state
    from tests.support.serving import serving

    # a container may be given a proxy: the probe of loopback never goes through it
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with seeded_state(tmp_path) as state:
        for alive, expected in ((True, (True, "200 ok")), (False, (False, "503 the scoring"))):
            live = replace(state, worker_alive=lambda alive=alive: alive)
            with serving(create_app(state.settings, live)) as base:
                port = int(base.rsplit(":", 1)[1])
                settings = Settings(data_dir=tmp_path, http_host="127.0.0.1", http_port=port)
                healthy, said = probe_health(settings, timeout=30)
            assert healthy is expected[0]
            assert said.startswith(f"{base}/healthz: {expected[1]}"), said
