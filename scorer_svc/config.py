"""Scorer settings: flags, a YAML file or SCORER_* environment variables, validated at start."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    CliSuppress,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from common.dtypes import COMPUTE_DTYPES
from common.validation import ZmqUrl, describe_errors, is_loopback, one_of
from scorer_svc.storage.db import masked

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """One or more settings are invalid; the message names every one."""


class Settings(BaseSettings):
    """The scorer's settings: each is a flag of `scorer-svc serve` (but token), a key of its
    --config YAML file and a SCORER_<NAME> environment variable, in that order of priority."""

    model_config = SettingsConfigDict(
        env_prefix="SCORER_",
        extra="forbid",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_show_env_vars=True,
    )

    http_host: str = Field(
        "127.0.0.1", description="REST bind address (anything but loopback is logged as a warning)"
    )
    http_port: int = Field(8000, ge=0, le=65535, description="REST port")
    zmq_url: ZmqUrl = Field(
        "tcp://127.0.0.1:5555",
        description="ZeroMQ ROUTER bind address: tcp://HOST:PORT or ipc://PATH",
    )
    data_dir: Path = Field(
        Path("scorer_data"),
        description="received checkpoints (until scored) and the default database",
    )
    model_root: list[Path] = Field(
        default_factory=list,
        description="a folder base models may be loaded from (repeat the flag for more); "
        "none given: the data_dir only",
    )
    data_root: list[Path] = Field(
        default_factory=list,
        description="a folder datasets may be read from (repeat the flag for more); none "
        "given: the data_dir only",
    )
    trust_remote_code: bool = Field(
        False,
        description="let model folders run their own code (auto_map); only when you trust "
        "every model under the model roots",
    )
    database_url: str | None = Field(
        None,
        description="a SQLAlchemy URL: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB "
        "(pip install 'delta-loss-selector[postgres]' for psycopg 3; a URL with a password not "
        "as a flag, since a command line shows in ps: SCORER_DATABASE_URL, the --config file or "
        "database_url_file); the schema is brought up to date at start; null: "
        "sqlite:///DATA_DIR/scorer.db",
    )
    database_url_file: Path | None = Field(
        None, description="a file holding database_url (instead of database_url itself)"
    )
    instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="this scorer's name in a shared database: the runs it registers are its "
        "own (their checkpoints live on its disk), and a scorer started again under the same "
        "name takes them back; null: a name kept in DATA_DIR/instance_id, made at first start",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Annotated[str, one_of(COMPUTE_DTYPES)] = Field(
        "auto",
        description="auto (float32 on CPU; on CUDA bfloat16 with autocast where the GPU "
        "computes it natively, from Ampere on, else float16), float32 (scored in float32, no "
        "autocast), bfloat16 (with autocast on CUDA) or float16",
    )
    batch_size: int = Field(
        16, ge=1, description="rows per scoring batch (samples grouped by length)"
    )
    max_batch_tokens: int = Field(
        16384,
        ge=1,
        description="padded tokens per scoring batch; on a GPU a batch is also cut to what its "
        "free memory holds",
    )
    max_checkpoint_bytes: int = Field(
        16 << 30,
        ge=1,
        description="a checkpoint declaring more is refused (too_large); 17179869184 is 16 GiB",
    )
    max_run_data_bytes: int = Field(
        4 << 30,
        ge=1,
        description="memory for runs' tokenized samples; beyond it the least recently used "
        "runs' are dropped and tokenized again when needed (4294967296 is 4 GiB)",
    )
    model_cache_bytes: int | None = Field(
        None,
        ge=1,
        description="memory for scoring models kept loaded, so that runs on different base "
        "models do not reload at every checkpoint; the least recently used go first; null: "
        "60% of the GPU memory free when the scorer starts (what a trainer started earlier "
        "on that GPU holds is left to it), or on the CPU a quarter of the host's memory or of "
        "the container's limit",
    )
    rank_timeout_seconds: float = Field(
        1800.0,
        gt=0,
        description="under torchrun: how long a collective between the scorer's ranks may "
        "wait (a checkpoint's broadcast, a run's preparation, a share's scoring) before the "
        "rank is given up",
    )
    retry_after_seconds: int = Field(1, ge=1, description="the Retry-After of a 202 response")
    database_busy_timeout_seconds: float = Field(
        30.0, gt=0, description="how long SQLite waits for a lock before a write fails"
    )
    database_outage_seconds: float = Field(
        120.0,
        ge=0,
        description="how long the worker and the intake try again, with growing pauses, a "
        "database that stopped answering (PostgreSQL restarting or failing over, a lost "
        "connection) before the checkpoint at hand fails; 0: not tried again",
    )
    exit_after_runs: int | None = Field(
        None,
        ge=1,
        description="stop (exit 0) once this many runs have ended after the start and nothing "
        "is left to score, as for a batch job; null: serve until stopped",
    )
    keep_checkpoints: bool = Field(
        False, description="keep received tensors after scoring (they are needed only until then)"
    )
    log_level: Annotated[str, one_of(LOG_LEVELS, upper=True)] = Field(
        "INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    # A secret: hidden from the flags, and refused there, since a command line shows in `ps`.
    token: CliSuppress[SecretStr | None] = Field(
        None,
        description="a shared secret every request must carry (Bearer on REST, but for /healthz "
        "and the API documentation; the password of the ZeroMQ handshake); SCORER_TOKEN or the "
        "YAML file only, never a flag; null: no token",
    )
    token_file: Path | None = Field(
        None, description="a file holding the token (instead of token itself)"
    )
    allow_unauthenticated_writes: bool = Field(
        False,
        description="with no token set: let any REST client that reaches the scorer delete "
        "runs and report their end (DELETE /v1/runs/RUN, POST /v1/runs/RUN/end) without the "
        "run's own token (X-Run-Token: the run_token in the trainer's output_dir/run.json, "
        "which the trainer sends by itself); with a token set, the token is needed all the same",
    )
    curve_secret_key_file: Path | None = Field(
        None,
        description="ZeroMQ CURVE: this scorer's NAME.key_secret (with curve_authorized_keys_dir); "
        "null: no CURVE",
    )
    curve_authorized_keys_dir: Path | None = Field(
        None,
        description="ZeroMQ CURVE: the folder of the public NAME.key files of the trainers "
        "allowed in",
    )

    tls_certfile: Path | None = Field(
        None,
        description="serve REST over HTTPS with this PEM certificate (chain), with tls_keyfile; "
        "null: plain HTTP",
    )
    tls_keyfile: Path | None = Field(None, description="the PEM private key of tls_certfile")

    @model_validator(mode="after")
    def _one_token_source(self) -> Settings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.token_file is not None and not self.token_file.is_file():
            raise ValueError(f"token_file {self.token_file} does not exist")
        if self.database_url is not None and self.database_url_file is not None:
            raise ValueError("set database_url or database_url_file, not both")
        if self.database_url_file is not None:
            if not self.database_url_file.is_file():
                raise ValueError(f"database_url_file {self.database_url_file} does not exist")
            if not self.database_url_file.read_text(encoding="utf-8").strip():
                raise ValueError(f"database_url_file {self.database_url_file} is empty")
        curve = (self.curve_secret_key_file, self.curve_authorized_keys_dir)
        if (curve[0] is None) != (curve[1] is None):
            raise ValueError("CURVE needs both curve_secret_key_file and curve_authorized_keys_dir")
        if curve[1] is not None and not curve[1].is_dir():
            raise ValueError(f"curve_authorized_keys_dir {curve[1]} is not a folder")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("HTTPS needs both tls_certfile and tls_keyfile")
        for name in ("tls_certfile", "tls_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self

    def shared_token(self) -> str | None:
        """The token in force, or None when requests need none."""
        if self.token_file is not None:
            value = self.token_file.read_text(encoding="utf-8").strip()
            if not value:
                raise SettingsError(f"token_file {self.token_file} is empty")
            return value
        return self.token.get_secret_value() if self.token is not None else None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        ok = value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
        if not ok:
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @property
    def database_for_logs(self) -> str:
        """The database URL with any password masked."""
        return masked(self.resolved_database_url)

    @property
    def resolved_database_url(self) -> str:
        """database_url, else SQLite in the data_dir. A PostgreSQL URL without a driver gets
        psycopg 3's (the `postgres` extra), not SQLAlchemy's default psycopg2."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'scorer.db'}"
        if self.database_url_file is not None:  # checked not empty at start
            url = self.database_url_file.read_text(encoding="utf-8").strip()
        for bare in ("postgresql://", "postgres://"):
            if url.startswith(bare):
                return "postgresql+psycopg://" + url[len(bare) :]
        return url

    @property
    def http_scheme(self) -> str:
        return "https" if self.tls_certfile is not None else "http"

    def exposed_addresses(self) -> list[str]:
        """Addresses bound beyond loopback, to be logged at start."""
        exposed = []
        if not is_loopback(self.http_host):
            exposed.append(f"{self.http_scheme}://{self.http_host}:{self.http_port}")
        zmq_host = self.zmq_url.split("://", 1)[1].rsplit(":", 1)[0]
        if self.zmq_url.startswith("tcp://") and not is_loopback(zmq_host):
            exposed.append(self.zmq_url)
        return exposed


def load_settings(
    values: Mapping[str, Any] | None = None, flags: CliSettingsSource[Settings] | None = None
) -> Settings:
    """Settings from parsed flags, over values (a --config file's), over SCORER_* variables,
    over defaults; SettingsError naming every bad one."""
    try:
        return Settings(_cli_settings_source=flags, **dict(values or {}))
    except ValidationError as exc:
        problems = "".join(
            f"\n  {line}" for line in describe_errors(exc.errors(), default="settings")
        )
        raise SettingsError(
            f"invalid scorer settings (see scorer-svc serve --help):{problems}"
        ) from None


def config_file_values(path: Path) -> dict[str, Any]:
    """The settings in a YAML file, checked against Settings later with the others."""
    if not path.is_file():
        raise SettingsError(
            f"config file {path} does not exist: give --config an existing YAML file"
        )
    try:
        return YamlConfigSettingsSource(Settings, yaml_file=path, yaml_file_encoding="utf-8")()
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    except ValueError:
        raise SettingsError(
            f"config file {path} must be a YAML mapping of settings, e.g. http_port: 8000"
        ) from None


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """The SCORER_* variables in environ that name no setting (the names are case-insensitive)."""
    known = set(_environment_names())
    return sorted(
        name for name in environ if name.upper().startswith("SCORER_") and name.upper() not in known
    )


def _environment_names() -> list[str]:
    return [f"SCORER_{name.upper()}" for name in Settings.model_fields]


def warn_unknown_environment(environ: Mapping[str, str]) -> None:
    """Log the SCORER_* variables that set nothing, a misspelling most likely."""
    unknown = unknown_environment(environ)
    if unknown:
        log.warning(
            "ignoring unknown environment variable(s) %s; the scorer's are %s",
            ", ".join(unknown),
            ", ".join(_environment_names()),
        )
