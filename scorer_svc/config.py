"""Scorer settings: flags, SCORER_* environment variables or a YAML file, validated at start."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.validation import check_zmq_url, describe_errors

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """One or more settings are invalid; the message names every one."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCORER_", extra="forbid")

    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    zmq_url: str = "tcp://127.0.0.1:5555"
    data_dir: Path = Path("scorer_data")
    database_url: str | None = None  # default: sqlite:///<data_dir>/scorer.db
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16
    batch_size: int = Field(16, ge=1)
    max_batch_tokens: int = Field(16384, ge=1)
    max_checkpoint_bytes: int = Field(16 << 30, ge=1)
    retry_after_seconds: int = Field(1, ge=1)
    database_busy_timeout_seconds: float = Field(30.0, gt=0)
    keep_checkpoints: bool = False  # keep tensors after scoring (they are needed only until then)
    log_level: str = "INFO"
    # A shared secret required on every request (Bearer on REST, `token` in ZeroMQ headers).
    token: SecretStr | None = None
    token_file: Path | None = None
    # CURVE for links across hosts: this scorer's secret key file, and a folder of the public
    # key files (NAME.key) of the trainers allowed in. Both or neither.
    curve_secret_key_file: Path | None = None
    curve_authorized_keys_dir: Path | None = None

    @model_validator(mode="after")
    def _one_token_source(self) -> Settings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.token_file is not None and not self.token_file.is_file():
            raise ValueError(f"token_file {self.token_file} does not exist")
        curve = (self.curve_secret_key_file, self.curve_authorized_keys_dir)
        if (curve[0] is None) != (curve[1] is None):
            raise ValueError("CURVE needs both curve_secret_key_file and curve_authorized_keys_dir")
        if curve[1] is not None and not curve[1].is_dir():
            raise ValueError(f"curve_authorized_keys_dir {curve[1]} is not a folder")
        return self

    def shared_token(self) -> str | None:
        """The token in force, or None when requests need none."""
        if self.token_file is not None:
            value = self.token_file.read_text(encoding="utf-8").strip()
            if not value:
                raise SettingsError(f"token_file {self.token_file} is empty")
            return value
        return self.token.get_secret_value() if self.token is not None else None

    @field_validator("zmq_url")
    @classmethod
    def _zmq_url(cls, value: str) -> str:
        return check_zmq_url(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        ok = value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
        if not ok:
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("must be auto, float32, bfloat16 or float16")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'scorer.db'}"

    def exposed_addresses(self) -> list[str]:
        """Addresses bound beyond loopback, to be logged at start."""
        exposed = []
        if not _is_loopback(self.http_host):
            exposed.append(f"http://{self.http_host}:{self.http_port}")
        zmq_host = self.zmq_url.split("://", 1)[1].rsplit(":", 1)[0]
        if self.zmq_url.startswith("tcp://") and not _is_loopback(zmq_host):
            exposed.append(self.zmq_url)
        return exposed


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from overrides (flags, file) over SCORER_* variables over defaults."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "".join(
            f"\n  {line}" for line in describe_errors(exc.errors(), default="settings")
        )
        raise SettingsError(f"invalid scorer settings:{problems}") from None
