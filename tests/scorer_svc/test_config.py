"""Scorer settings: flags over file over environment, every bad value named at once."""

import pytest

from scorer_svc.cli import main, parse_args, settings_from
from scorer_svc.config import Settings, SettingsError, load_settings


def test_flags_win_over_file_and_file_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORER_HTTP_PORT", "9001")
    monkeypatch.setenv("SCORER_DEVICE", "cpu")
    config = tmp_path / "scorer.yaml"
    config.write_text("http_port: 9002\nbatch_size: 4\n")
    args = parse_args(["serve", "--config", str(config), "--batch-size", "2"])
    settings = settings_from(args)
    assert (settings.http_port, settings.batch_size, settings.device) == (9002, 2, "cpu")


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


def test_cli_exits_2_with_the_reason(capsys):
    assert main(["serve", "--device", "tpu"]) == 2
    assert "device: Value error, must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_curve_needs_both_the_secret_key_and_the_authorized_keys(tmp_path):
    from common.curve import create_keys

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
