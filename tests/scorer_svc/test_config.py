"""Scorer settings: flags over file over environment, every bad value named at once."""

import logging

import pytest

from scorer_svc.cli import build_parser, main, serve_settings
from scorer_svc.config import Settings, SettingsError, load_settings, warn_unknown_environment


def settings_of(*argv: str) -> Settings:
    """The settings of `scorer-svc serve ARGV`, through the real parser."""
    parser, flags = build_parser()
    return serve_settings(parser.parse_args(["serve", *argv]), flags)


def test_flags_win_over_file_and_file_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORER_HTTP_PORT", "9001")
    monkeypatch.setenv("SCORER_DEVICE", "cpu")
    monkeypatch.setenv("SCORER_RETRY_AFTER_SECONDS", "5")
    config = tmp_path / "scorer.yaml"
    config.write_text("http_port: 9002\nbatch_size: 4\nretry_after_seconds: 3\n")
    settings = settings_of("--config", str(config), "--batch-size", "2")
    assert (settings.http_port, settings.batch_size, settings.device) == (9002, 2, "cpu")
    assert settings.retry_after_seconds == 3
    assert settings_of("--retry-after-seconds", "7").retry_after_seconds == 7


def test_every_setting_but_the_token_is_a_flag():
    settings = settings_of(
        "--keep-checkpoints",
        "--max-checkpoint-bytes", "1024",
        "--database-busy-timeout-seconds", "2.5",
        "--database-url", "sqlite:///x.db",
        "--token-file", __file__,
    )  # fmt: skip
    assert settings.keep_checkpoints is True and settings.max_checkpoint_bytes == 1024
    assert settings.database_busy_timeout_seconds == 2.5
    assert settings.resolved_database_url == "sqlite:///x.db" and settings.token is None


def test_the_token_comes_from_the_environment_or_the_file(tmp_path, monkeypatch):
    config = tmp_path / "scorer.yaml"
    config.write_text("token: from-file\n")
    assert settings_of("--config", str(config)).shared_token() == "from-file"
    monkeypatch.setenv("SCORER_TOKEN", "from-env")
    assert settings_of().shared_token() == "from-env"


def test_defaults_bind_loopback_and_put_the_database_in_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.http_host == "127.0.0.1" and settings.zmq_url.startswith("tcp://127.0.0.1:")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'scorer.db'}"
    assert settings.exposed_addresses() == []
    wide = Settings(http_host="0.0.0.0", zmq_url="tcp://0.0.0.0:5555")
    assert wide.exposed_addresses() == ["http://0.0.0.0:8000", "tcp://0.0.0.0:5555"]


def test_every_bad_setting_is_named_in_one_error():
    with pytest.raises(SettingsError) as info:
        load_settings(
            {"http_port": 70000, "device": "gpu", "zmq_url": "x", "dtype": "x", "log_level": "x"}
        )
    for key in ("http_port", "device", "zmq_url", "dtype", "log_level"):
        assert key in str(info.value)
    assert "is not a ZeroMQ endpoint" in str(info.value)


def test_bad_flags_file_keys_and_variables_are_named_together(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCORER_BATCH_SIZE", "0")
    config = tmp_path / "scorer.yaml"
    config.write_text("log_level: loud\nhttp_prot: 80\n")
    assert main(["serve", "--config", str(config), "--http-port", "port"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scorer-svc: invalid scorer settings")
    for line in (
        "http_port: Input should be a valid integer",
        "batch_size: Input should be greater than or equal to 1",
        "log_level: Value error, 'loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        "http_prot: Extra inputs are not permitted",
    ):
        assert f"\n  {line}" in err


def test_a_missing_or_malformed_config_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        settings_of("--config", str(tmp_path / "missing.yaml"))
    listed = tmp_path / "list.yaml"
    listed.write_text("- http_port: 80\n")
    with pytest.raises(SettingsError, match="must be a YAML mapping"):
        settings_of("--config", str(listed))
    broken = tmp_path / "broken.yaml"
    broken.write_text("http_port: [\n")
    with pytest.raises(SettingsError, match="is not valid YAML"):
        settings_of("--config", str(broken))


def test_cli_exits_2_with_the_reason(capsys):
    assert main(["serve", "--device", "tpu"]) == 2
    assert "device: Value error, must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_an_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--batch-sise", "2"])
    assert info.value.code == 2
    assert "unrecognized arguments: --batch-sise" in capsys.readouterr().err


def test_unknown_scorer_variables_are_warned_about_by_name(caplog):
    environ = {"SCORER_BATCH_SIZ": "3", "SCORER_DEVICE": "cpu", "scorer_tokn": "x", "HOME": "/"}
    with caplog.at_level(logging.WARNING, logger="scorer_svc.config"):
        warn_unknown_environment(environ)
        [record] = caplog.records
        assert "SCORER_BATCH_SIZ, scorer_tokn;" in record.getMessage()
        assert "SCORER_BATCH_SIZE" in record.getMessage() and "HOME" not in record.getMessage()
        caplog.clear()
        warn_unknown_environment({"SCORER_DEVICE": "cpu", "scorer_token": "x"})
        assert caplog.records == []


def test_curve_needs_both_the_secret_key_and_the_authorized_keys(tmp_path):
    from common.wire.curve import create_keys

    _, secret = create_keys(tmp_path, "scorer")
    with pytest.raises(SettingsError, match="needs both"):
        load_settings({"curve_secret_key_file": str(secret)})
    with pytest.raises(SettingsError, match="not a folder"):
        load_settings({"curve_secret_key_file": str(secret), "curve_authorized_keys_dir": "nope"})
    ok = load_settings(
        {"curve_secret_key_file": str(secret), "curve_authorized_keys_dir": tmp_path}
    )
    assert ok.curve_authorized_keys_dir == tmp_path


def test_keys_command_writes_a_pair(tmp_path, capsys):
    assert main(["keys", str(tmp_path), "trainer"]) == 0
    assert (tmp_path / "trainer.key").is_file() and (tmp_path / "trainer.key_secret").is_file()
    assert "trainer.key_secret" in capsys.readouterr().out


def test_a_database_password_never_reaches_the_log():
    settings = Settings(database_url="postgresql+psycopg://scorer:s3cret@db:5432/history")
    assert settings.database_for_logs == "postgresql+psycopg://scorer:***@db:5432/history"
    assert "s3cret" not in settings.database_for_logs


@pytest.mark.parametrize(
    "over, warned",
    [
        ({}, []),
        ({"http_host": "0.0.0.0"}, ["beyond loopback", "plain HTTP"]),
        ({"zmq_url": "tcp://0.0.0.0:5555"}, ["beyond loopback", "PLAIN"]),
    ],
)
def test_a_token_exposed_in_clear_is_warned_of_at_start(tmp_path, caplog, over, warned):
    from scorer_svc.main import _log_exposure

    settings = Settings(data_dir=tmp_path, token="t", **over)
    with caplog.at_level(logging.WARNING, logger="scorer_svc.main"):
        _log_exposure(settings)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(warned)
    for message, words in zip(messages, warned, strict=True):
        assert words in message


def test_in_the_image_an_open_address_is_the_containers_own_and_no_warning(
    tmp_path, caplog, monkeypatch
):
    from common.container import IMAGE_MARK
    from scorer_svc.main import _log_exposure

    monkeypatch.setenv(IMAGE_MARK, "1")
    settings = Settings(data_dir=tmp_path, http_host="0.0.0.0")
    with caplog.at_level(logging.INFO, logger="scorer_svc.main"):
        _log_exposure(settings)
    levels = {r.getMessage(): r.levelname for r in caplog.records}
    assert levels["listening at http://0.0.0.0:8000 in the container (the host publishes it)"] == (
        "INFO"
    )
    assert "WARNING" not in levels.values()
