"""The training config: the seed's YAML keys plus the scorer's, validated before any heavy work.

`load_config` reads the YAML (and `key=value` overrides), warns once about unknown keys, and
raises one `ConfigError` that names every bad key: wrong types and ranges, impossible
combinations, a window_size outside [0, 1], warmup or update segments larger than the data.
A value is checked by its field; the combinations of keys and the segment sizes are checked
on the typed config (the bad keys at their defaults, so that all problems come at once).
scorer_token is filled from $SCORER_TOKEN here, when the config leaves it unset: the rest of
the trainer reads `scorer_token` only.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from transformers.trainer_utils import SchedulerType

from common.datasets import DatasetError, load_alpaca, resolve_dataset
from common.launch import Launch
from common.protocol import (
    MAX_LORA_RANK,
    MAX_NAME_CHARS,
    MAX_TARGET_MODULES,
    MAX_UPDATES,
    Kind,
)
from common.selection import DEFAULT_WINDOW_SIZE
from common.tokenization import TEMPLATE_NAMES
from common.validation import RunId, ZmqUrl, one_of, problems_by_key

logger = logging.getLogger(__name__)

SCHEDULERS = tuple(s.value for s in SchedulerType)
CURVE_KEYS = ("scorer_curve_secret_key_file", "scorer_curve_server_key_file")


OnFailure = Literal["fail", "uniform"]  # the on_scorer_failure values


class ConfigError(ValueError):
    """One or more config keys are wrong; `problems` maps each key to what is wrong."""

    def __init__(self, problems: dict[str, str]):
        self.problems = dict(problems)
        lines = "\n".join(f"  {key}: {msg}" for key, msg in self.problems.items())
        super().__init__(f"invalid config ({len(self.problems)} key(s) to fix):\n{lines}")


class TrainConfig(BaseModel):
    """Every key the trainer reads, with its default; the single place defaults live."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # model and method
    model_name_or_path: str = Field(min_length=1)
    trust_remote_code: bool = False
    stage: Literal["sft"] = "sft"
    do_train: Literal[True] = True
    finetuning_type: Kind = "lora"
    lora_target: str = "all"
    lora_rank: int = Field(8, ge=1, le=MAX_LORA_RANK)
    lora_alpha: float | None = Field(None, gt=0, le=1e6, allow_inf_nan=False)  # None: 2 x rank
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # data
    dataset: str = Field(min_length=1)
    dataset_dir: str | None = None
    eval_dataset: str | None = None  # an evaluation loss before, during and after training
    eval_steps: int | None = Field(None, ge=1)  # None: only before and after training
    per_device_eval_batch_size: int = Field(8, ge=1)
    do_eval: bool = False  # accepted; eval_dataset alone turns evaluation on
    template: Annotated[str, one_of(TEMPLATE_NAMES)] = "auto"
    cutoff_len: int = Field(1024, ge=2)
    overwrite_cache: bool = False  # accepted; tokenization is not cached
    preprocessing_num_workers: int | None = Field(None, ge=1)  # accepted; unused
    dataloader_num_workers: Literal[0] = 0  # workers prefetch ahead of the schedule
    seed: int = 42
    # output
    output_dir: str = Field(min_length=1)
    logging_steps: float = Field(10, gt=0)
    save_steps: float = Field(500, gt=0)
    plot_loss: bool = False
    save_only_model: bool = False
    overwrite_output_dir: bool = False
    resume_from_checkpoint: str | None = None
    report_to: str | list[str] = "none"
    # optimisation
    per_device_train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    lr_scheduler_type: Annotated[str, one_of(SCHEDULERS)] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    bf16: bool = False
    fp16: bool = False
    ddp_timeout: int = Field(1800, ge=1)
    # dynamic selection (DataFlex keys)
    train_type: Literal["dynamic_select"] = "dynamic_select"
    components_cfg_file: str | None = None
    component_name: Literal["delta_loss"] = "delta_loss"
    warmup_step: int = Field(10, ge=0)
    update_step: int = Field(10, ge=1)
    update_times: int = Field(2, ge=1, le=MAX_UPDATES)
    # the scorer (ours)
    run_id: RunId | None = None
    scorer_zmq_url: ZmqUrl = "tcp://127.0.0.1:5555"
    scorer_http_url: str = "http://127.0.0.1:8000"
    scorer_token: str | None = Field(None, validate_default=True)  # unset: $SCORER_TOKEN
    scorer_ca_file: str | None = None  # the CA an https scorer_http_url's certificate verifies by
    # CURVE (links across hosts): this trainer's secret key file and the scorer's public key.
    scorer_curve_secret_key_file: str | None = None
    scorer_curve_server_key_file: str | None = None
    selection_mode: Literal["sync", "async"] = "sync"
    scorer_wait_seconds: float = Field(600.0, gt=0)
    on_scorer_failure: OnFailure = "fail"

    @field_validator("scorer_http_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"{value!r} is not an http(s) URL: use one such as http://127.0.0.1:8000"
            )
        return value

    @field_validator(*CURVE_KEYS, "scorer_ca_file")
    @classmethod
    def _key_file_exists(cls, value: str | None) -> str | None:
        if value and not Path(value).expanduser().is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @field_validator("scorer_token")
    @classmethod
    def _token_from_environment(cls, value: str | None) -> str | None:
        return value or os.environ.get("SCORER_TOKEN") or None

    @property
    def target_modules(self) -> str | list[str]:
        if self.lora_target.strip() == "all":
            return "all-linear"
        return [name.strip() for name in self.lora_target.split(",") if name.strip()]

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config and what was resolved while checking it (no model is loaded yet)."""

    config: TrainConfig
    window_size: float
    dataset_path: Path
    samples: list[dict[str, str]]
    eval_path: Path | None
    eval_samples: list[dict[str, str]] | None
    world_size: int

    @property
    def batch(self) -> int:
        """B: samples per optimizer step over all processes."""
        cfg = self.config
        return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * self.world_size


def read_yaml(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping with `key=value` overrides applied (values parsed as YAML scalars)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError({"<file>": f"{path} is not valid YAML: {exc}"}) from None
    if not isinstance(raw, dict):
        raise ConfigError({"<file>": f"{path} must hold a mapping of keys to values"})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError({item: "an override must look like key=value"})
        try:
            raw[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError({item: f"the value is not valid YAML: {exc}"}) from None
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedConfig:
    return parse_config(read_yaml(path, overrides), base_dir=Path(path).parent)


M = TypeVar("M", bound=BaseModel)


def validate_keys(model: type[M], raw: dict[str, Any]) -> tuple[M, dict[str, str]]:
    """The keys model knows, validated: (the config, problems by key). Unknown keys get one
    warning naming them all. With problems the config is partial, for the checks that follow
    to name theirs too: the valid keys, defaults for the others, a required key that failed
    left unset (read it with getattr)."""
    known = set(model.model_fields)
    unknown = sorted(set(raw) - known)
    if unknown:
        logger.warning("ignoring unknown config keys: %s", ", ".join(unknown))
    values = {k: v for k, v in raw.items() if k in known}
    try:
        return model.model_validate(values), {}
    except ValidationError as exc:
        problems = problems_by_key(exc.errors(), values)
    valid = {key: value for key, value in values.items() if key not in problems}
    return model.model_construct(**valid), problems


def parse_config(raw: dict[str, Any], base_dir: Path | None = None) -> LoadedConfig:
    """Validate everything that can be checked without a model; one error for all problems:
    files are read and keys checked together also when some keys are bad alone."""
    cfg, problems = validate_keys(TrainConfig, raw)
    window_size = _window_size(cfg, base_dir, problems)
    world_size = _world_size(raw, cfg, problems)
    dataset_path, samples = _dataset(cfg, "dataset", base_dir, problems)
    eval_path, eval_samples = (None, None)
    if getattr(cfg, "eval_dataset", None):
        eval_path, eval_samples = _dataset(cfg, "eval_dataset", base_dir, problems)
    later = combination_problems(cfg)
    if samples is not None:
        later.update(size_problems(cfg, len(samples), world_size))
    problems.update({k: v for k, v in later.items() if k not in problems})
    if problems or dataset_path is None or samples is None:
        raise ConfigError(problems)
    return LoadedConfig(
        cfg, window_size, dataset_path, samples, eval_path, eval_samples, world_size
    )


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_local(name: str) -> bool:
    """A path that does not exist is local (an error) unless it reads as a hub id org/name."""
    if not HUB_ID.match(name):
        return True
    return Path(name.split("/")[0]).exists()


def base_model_problem(name: str) -> str | None:
    """What is wrong with a base model named by a local path (a hub id is left to the hub)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"{name} has no config.json (not a model directory)"
    elif path.exists() or _looks_local(name):
        return f"{name} does not exist (or is not a directory)"
    return None


def combination_problems(cfg: TrainConfig) -> dict[str, str]:
    """Keys whose values are valid alone but not together, with what to change."""
    problems: dict[str, str] = {}
    base = getattr(cfg, "model_name_or_path", None)  # unset in a config with it missing
    if base is not None and (problem := base_model_problem(base)):
        problems["model_name_or_path"] = problem
    given = [key for key in CURVE_KEYS if getattr(cfg, key)]
    if len(given) == 1:
        (missing,) = set(CURVE_KEYS) - set(given)
        problems[missing] = f"CURVE needs both {CURVE_KEYS[0]} and {CURVE_KEYS[1]}"
    if cfg.bf16 and cfg.fp16:
        problems["fp16"] = "bf16 and fp16 cannot both be true"
    if cfg.eval_steps is not None and not cfg.eval_dataset:
        problems["eval_steps"] = "needs eval_dataset (the data the evaluation loss is taken on)"
    targets = _target_list(cfg.lora_target)
    if cfg.finetuning_type == "lora" and not targets:
        problems["lora_target"] = "name at least one module, or 'all'"
    elif len(targets) > MAX_TARGET_MODULES or any(len(t) > MAX_NAME_CHARS for t in targets):
        problems["lora_target"] = (
            f"at most {MAX_TARGET_MODULES} module names of at most {MAX_NAME_CHARS} characters"
        )
    output_dir = getattr(cfg, "output_dir", None)  # unset in a config with it missing
    holds_a_run = output_dir is not None and (Path(output_dir) / "selections.jsonl").exists()
    if holds_a_run and not (cfg.overwrite_output_dir or cfg.resume_from_checkpoint):
        problems["overwrite_output_dir"] = (
            f"{output_dir} already holds a run; set overwrite_output_dir: true "
            "or resume_from_checkpoint"
        )
    return problems


def _target_list(value: Any) -> list[str]:
    return [name for name in str(value or "").split(",") if name.strip()]


def _find_file(name: str, base_dir: Path | None) -> Path | None:
    """A relative path is tried from the working directory, then from the config's folder."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if base_dir is not None and not path.is_absolute() and (base_dir / path).is_file():
        return base_dir / path
    return None


def _window_size(cfg: TrainConfig, base_dir: Path | None, problems: dict[str, str]) -> float:
    name = cfg.components_cfg_file
    if not name:
        return DEFAULT_WINDOW_SIZE
    path = _find_file(name, base_dir)
    if path is None:
        problems["components_cfg_file"] = f"{name} does not exist"
        return DEFAULT_WINDOW_SIZE
    try:
        components = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        problems["components_cfg_file"] = f"{path} is not valid YAML: {exc}"
        return DEFAULT_WINDOW_SIZE
    component = cfg.component_name
    entry = components.get(component) if isinstance(components, dict) else None
    if not isinstance(entry, dict):
        problems["component_name"] = f"{path} has no entry '{component}'"
        return DEFAULT_WINDOW_SIZE
    params = entry.get("params") or {}
    extra = sorted(set(params) - {"window_size", "cache_dir"})
    if extra:
        logger.warning("ignoring unknown %s params in %s: %s", component, path, ", ".join(extra))
    window = params.get("window_size", DEFAULT_WINDOW_SIZE)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window <= 1:
        problems["window_size"] = (
            f"{component}.params.window_size in {path} must be within [0, 1], got {window!r}"
        )
        return DEFAULT_WINDOW_SIZE
    return float(window)


# Sharded-training keys of LLaMA-Factory's and transformers' configs that this trainer does not
# honour: refused rather than silently ignored (data-parallel DDP under torchrun is supported).
UNSUPPORTED_PARALLELISM = ("deepspeed", "fsdp", "fsdp_config")


def _world_size(raw: dict[str, Any], cfg: TrainConfig, problems: dict[str, str]) -> int:
    """torchrun's WORLD_SIZE (1 without it); keys of parallelism this trainer lacks refused."""
    world = Launch.from_environment().world
    for key in UNSUPPORTED_PARALLELISM:
        if raw.get(key):
            problems[key] = (
                "DeepSpeed and FSDP are not supported: remove it; several GPUs train with "
                "data-parallel DDP under torchrun (FORCE_TORCHRUN=1, see the README)"
            )
    wait = getattr(cfg, "scorer_wait_seconds", 600.0)
    needed = 2 * wait + 120  # an update sends (up to the wait), then waits for weights (again)
    if world > 1 and cfg.ddp_timeout <= needed:
        problems["ddp_timeout"] = (
            f"{cfg.ddp_timeout}s is too short under torchrun: the other ranks wait in a "
            "collective while rank 0 sends a checkpoint and waits for its weights, each up to "
            f"scorer_wait_seconds ({wait:g}); set it above {needed:g}"
        )
    return world


def _dataset(
    cfg: TrainConfig, key: str, base_dir: Path | None, problems: dict[str, str]
) -> tuple[Path | None, list[dict[str, str]] | None]:
    name = getattr(cfg, key, None)
    if not name:
        return None, None
    dataset_dir = cfg.dataset_dir
    try:
        try:
            path = resolve_dataset(name, dataset_dir)
        except DatasetError:
            found = _find_file(name, base_dir)
            if found is None or found.suffix not in (".json", ".jsonl"):
                raise
            path = found.resolve()
        return path, load_alpaca(path)
    except DatasetError as exc:
        problems[key] = str(exc)
        return None, None


def size_problems(cfg: TrainConfig, n: int, world: int) -> dict[str, str]:
    """Warmup and update segments must fit in the dataset of n samples."""
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    problems: dict[str, str] = {}
    for key, steps in (("warmup_step", cfg.warmup_step), ("update_step", cfg.update_step)):
        if batch * steps > n:
            problems[key] = (
                f"{key} x B = {steps} x {batch} = {batch * steps} samples, more than the "
                f"dataset's {n}; lower {key} or the batch size"
            )
    return problems
