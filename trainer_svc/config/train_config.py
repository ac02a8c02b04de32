"""The training config: the seed's YAML keys plus the scorer's, validated before any heavy work.

The keys come in groups (KEY_GROUPS: model, data, training, evaluation and output, selection,
scorer), one pydantic model each with a description per key; TrainConfig inherits them all, so
the YAML stays flat and one validation reports every bad key. `trainer-svc keys` prints them.

`load_config` reads the YAML (and `key=value` overrides), warns once about unknown keys, and
raises one `ConfigError` that names every bad key: wrong types and ranges, impossible
combinations, a window_size outside [0, 1], warmup or update segments larger than the data,
a report_to tracker that is unknown or whose package is not installed.
A value is checked by its field; the combinations of keys and the segment sizes are checked
on the typed config (the bad keys at their defaults, so that all problems come at once).
scorer_token is filled from $SCORER_TOKEN, or the file $SCORER_TOKEN_FILE names, here, when
the config leaves it unset: the rest of the trainer reads `scorer_token` only.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from common.data.datasets import (
    DatasetError,
    DatasetSpec,
    absolute_spec,
    dataset_items,
    is_path,
    load_samples,
    split_validation,
)
from common.data.samples import Sample
from common.data.tokenization import TEMPLATE_NAMES, TemplateName
from common.launch import Launch
from common.model_spec import ATTENTION, attention_problem, quantization_problem
from common.selection import DEFAULT_WINDOW_SIZE
from common.validation import RunId, RunName, RunTags, ZmqUrl, one_of, problems_by_key
from common.wire.protocol import (
    MAX_LORA_RANK,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_TARGET_MODULES,
    MAX_UPDATES,
    Kind,
)
from trainer_svc.training.schedule import Schedule

logger = logging.getLogger(__name__)

SCHEDULERS = tuple(s.value for s in SchedulerType)
OPTIMIZERS = tuple(o.value for o in OptimizerNames)
CURVE_KEYS = ("scorer_curve_secret_key_file", "scorer_curve_server_key_file")


OnFailure = Literal["fail", "uniform"]  # the on_scorer_failure values


class ConfigError(ValueError):
    """One or more config keys are wrong; `problems` maps each key to what is wrong."""

    def __init__(self, problems: dict[str, str]):
        self.problems = dict(problems)
        lines = "\n".join(f"  {key}: {msg}" for key, msg in self.problems.items())
        super().__init__(f"invalid config ({len(self.problems)} key(s) to fix):\n{lines}")


# The trackers report_to can name (transformers' integrations) and the pip packages each needs;
# "none" (no tracker) and "all" (every tracker installed) are accepted as well, alone.
TRACKERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "swanlab": ("swanlab",),
    "trackio": ("trackio",),
    "comet_ml": ("comet-ml",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "neptune": ("neptune",),
    "codecarbon": ("codecarbon",),
    "dagshub": ("dagshub", "mlflow"),
    "azure_ml": ("azureml-sdk",),
    "flyte": ("flytekit",),
    "kubeflow": (),  # no package: it reports to the server $KUBEFLOW_TRAINER_SERVER_URL names
}
# The modules a pip package installs where its name does not say them (any one of them will do).
PACKAGE_MODULES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "comet-ml": ("comet_ml",),
    "azureml-sdk": ("azureml",),
}


class Keys(BaseModel):
    """A group of the trainer's keys; TrainConfig joins the groups into one flat set of keys."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelKeys(Keys):
    """The base model and how it is fine-tuned."""

    model_name_or_path: str = Field(
        min_length=1,
        description="the base model: a local folder holding its config.json, or a hub id "
        "(org/name) already in the Hugging Face cache; nothing is downloaded at run time",
    )
    trust_remote_code: bool = Field(
        False,
        description="let the model folder run its own code (auto_map) when the trainer loads "
        "it; the scorer decides for itself (its --trust-remote-code)",
    )
    stage: Literal["sft"] = Field(
        "sft", description="the training stage; only sft (supervised fine-tuning) is accepted"
    )
    do_train: Literal[True] = Field(True, description="accepted only when true")
    finetuning_type: Kind = Field(
        "lora", description="lora (train a LoRA adapter) or full (train every weight)"
    )
    lora_target: str = Field(
        "all",
        description=f"the modules LoRA adapts: all (every linear layer) or a comma list of "
        f"module names (at most {MAX_TARGET_MODULES}, each at most {MAX_NAME_CHARS} characters)",
    )
    lora_rank: int = Field(
        8, ge=1, le=MAX_LORA_RANK, description=f"the LoRA rank r, 1 to {MAX_LORA_RANK}"
    )
    lora_alpha: float | None = Field(
        None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="the LoRA scaling alpha, above 0 and at most 1e6; null: 2 x lora_rank",
    )
    lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="the dropout on LoRA's inputs, in [0, 1)"
    )
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2", "fa3"] = Field(
        "auto",
        description="the attention implementation (attn_implementation): auto (transformers' "
        "choice), disabled (eager), sdpa, fa2 or fa3 (flash attention 2 or 3: a CUDA GPU and "
        "the flash_attn or flash_attn_interface package); the scorer builds the same",
    )
    quantization_bit: Literal[4, 8] | None = Field(
        None,
        description="load the base in 4 or 8 bits with bitsandbytes (QLoRA; 4 bits: NF4 with "
        "double quantization): LoRA only, on a CUDA GPU with bitsandbytes installed; null: "
        "not quantized",
    )
    quantization_method: Literal["bnb", "bitsandbytes"] = Field(
        "bnb", description="the quantization library: bnb (bitsandbytes, the only one)"
    )

    @property
    def target_modules(self) -> str | list[str]:
        if self.lora_target.strip() == "all":
            return "all-linear"
        return [name.strip() for name in self.lora_target.split(",") if name.strip()]

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


class DataKeys(Keys):
    """The training data, how it is read and tokenized, and the evaluation data."""

    dataset: str = Field(
        min_length=1,
        description="the training data: a comma list of names in "
        "dataset_dir/dataset_info.json and paths of .json, .jsonl, .csv, .parquet or .arrow "
        "files, concatenated in order",
    )
    dataset_dir: str | None = Field(
        None,
        description="the folder of dataset_info.json and of the files its entries name; "
        "null: data (as LLaMA-Factory), from the working directory",
    )
    eval_dataset: str | None = Field(
        None,
        description="the evaluation data, named as dataset: an evaluation loss before, during "
        "(every eval_steps) and after training; not with val_size; null: no evaluation set",
    )
    val_size: float = Field(
        0.0,
        ge=0.0,
        description="hold out part of the training data, seeded by seed, as the evaluation "
        "set: a fraction below 1 or a number of samples (1 or more); 0: none; not with "
        "eval_dataset",
    )
    max_samples: int | None = Field(
        None, ge=1, description="read only the first max_samples rows of each dataset; null: all"
    )
    template: TemplateName = Field(
        "auto",
        description=f"the prompt format: auto (the tokenizer's chat template, else plain), chat "
        f"(the tokenizer's chat template, required), or a built-in as LLaMA-Factory's: "
        f"{', '.join(TEMPLATE_NAMES[2:])}",
    )
    cutoff_len: int = Field(
        1024,
        ge=2,
        description="the most tokens of a sample, 2 or more; a longer one is cut turn by turn, "
        "prompt and response sharing what is left in proportion (LLaMA-Factory's infer_seqlen)",
    )
    packing: bool | None = Field(
        None,
        description="accepted only when false or null: every sample is scored on its own, "
        "so samples are never packed",
    )
    neat_packing: bool = Field(False, description="accepted only when false, as packing")
    overwrite_cache: bool = Field(
        False, description="accepted, no effect: tokenization is not cached"
    )
    preprocessing_num_workers: int | None = Field(
        None, ge=1, description="accepted, no effect: tokenization runs in the trainer's process"
    )
    dataloader_num_workers: Literal[0] = Field(
        0,
        description="accepted only as 0: workers would read batches ahead of the update that "
        "chooses them",
    )


class TrainingKeys(Keys):
    """The optimisation: batch, learning rate, precision, processes."""

    per_device_train_batch_size: int = Field(
        1, ge=1, description="training samples per step on each process, 1 or more"
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="steps whose gradients add up to one optimizer step, 1 or more; the batch "
        "B of an optimizer step is per_device_train_batch_size x this x the processes",
    )
    learning_rate: float = Field(1e-4, gt=0, description="the peak learning rate, above 0")
    num_train_epochs: float = Field(
        1.0,
        gt=0,
        description="epochs of the schedule, above 0 (a fraction allowed): an epoch is "
        "warmup_step + update_step x update_times optimizer steps; ignored when train_step is "
        "above 0",
    )
    lr_scheduler_type: Annotated[str, one_of(SCHEDULERS)] = Field(
        "cosine",
        description=f"the learning-rate schedule, one of transformers': {', '.join(SCHEDULERS)}",
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="the share of the optimizer steps the learning rate warms up over, in "
        "[0, 1) (not the selection's warmup_step)",
    )
    max_grad_norm: float = Field(
        1.0, ge=0.0, description="clip the gradients to this norm; 0: no clipping"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="the optimizer's weight decay, 0 or more")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam's beta1, in [0, 1)")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam's beta2, in [0, 1)")
    adam_epsilon: float = Field(1e-8, gt=0.0, description="Adam's epsilon, above 0")
    optim: Annotated[str, one_of(OPTIMIZERS)] = Field(
        "adamw_torch",
        description="the optimizer, by its transformers name (adamw_torch, adamw_torch_fused, "
        "sgd, adafactor, ...); an unknown name is refused with the list",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass to save memory "
        "(non-reentrant); off unless set, unlike LLaMA-Factory",
    )
    deepspeed: str | None = Field(
        None,
        description="a DeepSpeed JSON config file passed to the Trainer (the deepspeed package "
        "installed); ZeRO stage 0, 1 or 2 only: each checkpoint sent to the scorer needs whole "
        "parameters, and ZeRO-3's gather of them is not wired (shard with fsdp instead); null: "
        "no DeepSpeed",
    )
    fsdp: bool | str | list[str] | None = Field(
        None,
        description="shard the model with FSDP (FSDP2), as transformers' TrainingArguments "
        "takes it: true, or options as a string or a list (full_shard, shard_grad_op, offload, "
        "auto_wrap); full fine-tuning under torchrun with more than one process only; each "
        "checkpoint sent is the full state dict, gathered to rank 0's host memory (see "
        "docs/GPUS.md); null: DDP",
    )
    fsdp_config: dict[str, Any] | str | None = Field(
        None,
        description="FSDP's settings, with fsdp, as TrainingArguments takes them: a mapping, or "
        "a JSON or YAML file holding one (reshard_after_forward, cpu_offload, "
        "activation_checkpointing, cpu_ram_efficient_loading, auto_wrap_policy, "
        "transformer_layer_cls_to_wrap, min_num_params; version 2 and state_dict_type "
        "FULL_STATE_DICT only); null: transformers' defaults",
    )
    bf16: bool = Field(False, description="bfloat16 mixed precision; not with fp16")
    fp16: bool = Field(False, description="float16 mixed precision; not with bf16 or pure_bf16")
    pure_bf16: bool = Field(
        False,
        description="bfloat16 weights and optimizer states, with no float32 master copy "
        "(less memory); not with fp16",
    )
    ddp_timeout: int = Field(
        1800,
        ge=1,
        description="seconds a collective between processes may wait under torchrun; it must "
        "exceed 2 x scorer_wait_seconds + 120 when several processes train",
    )
    seed: int = Field(
        42,
        description="the run's seed (transformers' set_seed), the order each segment's draw "
        "is trained in, and the val_size split; runs with the same config and seed are "
        "repeatable",
    )


class OutputKeys(Keys):
    """Evaluation, checkpoints, logs and trackers."""

    eval_steps: int | None = Field(
        None,
        ge=1,
        description="evaluate every eval_steps optimizer steps, 1 or more (needs eval_dataset "
        "or val_size); null: only before and after training",
    )
    eval_strategy: Literal["no", "steps"] | None = Field(
        None,
        description="no (no evaluation at all, even with an evaluation set) or steps; null: "
        "steps when there is an evaluation set",
    )
    per_device_eval_batch_size: int = Field(
        8, ge=1, description="evaluation samples per step on each process, 1 or more"
    )
    metric_for_best_model: str | None = Field(
        None,
        description="the metric load_best_model_at_end compares (transformers'); null: the "
        "evaluation loss",
    )
    greater_is_better: bool | None = Field(
        None,
        description="whether a greater metric_for_best_model is better (transformers'); null: "
        "transformers' choice from the metric",
    )
    load_best_model_at_end: bool = Field(
        False,
        description="end with the checkpoint of the best evaluation: needs an evaluation set, "
        "eval_steps, and save_steps a multiple of eval_steps",
    )
    do_eval: bool = Field(
        False, description="accepted, no effect: eval_dataset or val_size turns evaluation on"
    )
    output_dir: str = Field(
        min_length=1,
        description="the folder of the run's checkpoints, model, selections.jsonl and logs; "
        "one that already holds a run needs overwrite_output_dir or resume_from_checkpoint",
    )
    logging_steps: float = Field(
        10,
        gt=0,
        description="log the loss every logging_steps optimizer steps (below 1: that share "
        "of the run's steps)",
    )
    save_steps: float = Field(
        500,
        gt=0,
        description="save a checkpoint every save_steps optimizer steps (below 1: that share "
        "of the run's steps)",
    )
    plot_loss: bool = Field(
        False, description="draw the training loss into output_dir/training_loss.png"
    )
    save_only_model: bool = Field(
        False,
        description="checkpoints hold the model only, without optimizer and scheduler states "
        "(a run cannot resume from them)",
    )
    save_total_limit: int | None = Field(
        None, ge=1, description="keep at most this many checkpoints, 1 or more; null: all"
    )
    overwrite_output_dir: bool = Field(
        False, description="train afresh into an output_dir that already holds a run"
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="resume the run from this checkpoint folder (OUTPUT_DIR/checkpoint-N); "
        "null: start afresh",
    )
    report_to: list[str] = Field(
        default_factory=list,
        description=f"the trackers the Trainer logs to: none, all (every one installed), or "
        f"tracker names as a YAML list or one string with commas, among {', '.join(TRACKERS)}; "
        "a tracker whose package is not installed is refused",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return [name.strip() for item in value for name in item.split(",") if name.strip()]
        return value

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, value: list[str]) -> list[str]:
        names = list(dict.fromkeys(value))
        if names == ["none"]:
            return []
        if len(names) > 1 and {"none", "all"} & set(names):
            raise ValueError(
                f"{', '.join(names)}: 'none' and 'all' stand alone; give one of them or "
                "tracker names"
            )
        problems = [tracker_problem(name) for name in names if name != "all"]
        if said := [problem for problem in problems if problem]:
            raise ValueError("; ".join(said))
        return names


class SelectionKeys(Keys):
    """Dynamic selection (DataFlex's keys): the schedule of the updates."""

    train_type: Literal["dynamic_select"] = Field(
        "dynamic_select", description="accepted only as dynamic_select"
    )
    components_cfg_file: str | None = Field(
        None,
        description="a DataFlex components YAML file, as DataFlex 1.1.0 writes it (the entry "
        "under selectors:) or flat (the entry at the top level); the entry component_name "
        f"names gives params.window_size, in [0, 1]; null: window_size {DEFAULT_WINDOW_SIZE}",
    )
    component_name: Literal["delta_loss"] = Field(
        "delta_loss", description="the selection component: delta_loss only"
    )
    warmup_step: int = Field(
        10,
        ge=0,
        description="optimizer steps at the start of each epoch, 0 or more, trained on B x "
        "warmup_step samples drawn uniformly before the epoch's first update; they must fit "
        "in the dataset",
    )
    update_step: int = Field(
        10,
        ge=1,
        description="optimizer steps each update's draw of B x update_step samples trains, "
        "1 or more; they must fit in the dataset",
    )
    update_times: int = Field(
        2,
        ge=1,
        le=MAX_UPDATES,
        description=f"updates of the selection per epoch, 1 to {MAX_UPDATES}: at each the "
        "trainer sends a checkpoint to the scorer and draws the next samples by its weights",
    )
    train_step: int = Field(
        0,
        ge=0,
        description="above 0: the run's optimizer steps, and num_train_epochs is ignored; 0: "
        "the steps follow from num_train_epochs",
    )


class ScorerKeys(Keys):
    """The scorer this trainer sends its checkpoints to (this tool's own keys)."""

    run_id: RunId | None = Field(
        None,
        description="the run's name at the scorer: 1 to 128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit, no '..'; kept in output_dir/run.json for resumes; "
        "null: made from output_dir's name",
    )
    run_name: RunName | None = Field(
        None,
        description="what people call the run (up to 256 characters): shown by the scorer's API "
        "and dashboard, searchable there, and the run name trackers (report_to) record; a resume "
        "may change it; null: none (trackers name it after output_dir)",
    )
    tags: RunTags = Field(
        default_factory=dict,
        description="the run's tags, a YAML mapping of key to text (up to 64; keys of letters, "
        "digits, '_', '.', '-', '/', ':' and spaces): stored by the scorer and searchable there "
        "(GET /v1/runs?tag=KEY=VALUE); a resume may change them",
    )
    scorer_zmq_url: ZmqUrl = Field(
        "tcp://127.0.0.1:5555",
        description="where checkpoints go: the scorer's ZeroMQ address, tcp://HOST:PORT or "
        "ipc://PATH",
    )
    scorer_http_url: str = Field(
        "http://127.0.0.1:8000",
        description="where weights come from: the scorer's REST URL, http:// or https://",
    )
    scorer_token: str | None = Field(
        None,
        validate_default=True,
        description="the scorer's shared token, if it has one; null: $SCORER_TOKEN, else the "
        "contents of the file $SCORER_TOKEN_FILE names",
    )
    scorer_ca_file: str | None = Field(
        None,
        description="the CA file (PEM) an https scorer_http_url's certificate must verify "
        "against; null: httpx's default CA bundle (certifi)",
    )
    scorer_curve_secret_key_file: str | None = Field(
        None,
        description="ZeroMQ CURVE, for links across hosts: this trainer's secret key file "
        "(NAME.key_secret), with scorer_curve_server_key_file; null: no CURVE",
    )
    scorer_curve_server_key_file: str | None = Field(
        None,
        description="ZeroMQ CURVE: the scorer's public key file (NAME.key), with "
        "scorer_curve_secret_key_file",
    )
    selection_mode: Literal["sync", "async"] = Field(
        "sync",
        description="sync waits for the weights of the checkpoint just sent (the published "
        "method); async trains on the newest weights available, so sending and scoring "
        "overlap training",
    )
    score_budget: float = Field(
        1.0,
        gt=0.0,
        allow_inf_nan=False,
        description="the samples the scorer measures at each checkpoint after the first with "
        "a window: a fraction in (0, 1] (0.1: a tenth) or a whole number of samples (500); "
        "the others are ranked on estimates; 1.0, every sample, is the published method",
    )
    scorer_wait_seconds: float = Field(
        600.0,
        gt=0,
        description="seconds to retry the scorer (with backoff, logged) before giving up, above 0",
    )
    on_scorer_failure: OnFailure = Field(
        "fail",
        description="fail: save a checkpoint and stop, saying what to check and how to "
        "resume; uniform: go on with uniform weights, logged and recorded",
    )

    @field_validator("score_budget")
    @classmethod
    def _budget(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(
                f"{value} is above 1 but not a whole number: give a fraction in (0, 1] (0.1: "
                "a tenth of the samples at each checkpoint) or a number of samples (500)"
            )
        return value

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
        if value or os.environ.get("SCORER_TOKEN"):
            return value or os.environ["SCORER_TOKEN"]
        path = os.environ.get("SCORER_TOKEN_FILE")  # a mounted secret, as the scorer's
        if not path:
            return None
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"SCORER_TOKEN_FILE {path} cannot be read ({exc.strerror})") from None
        if not token:
            raise ValueError(f"SCORER_TOKEN_FILE {path} is empty")
        return token


# The groups of keys, in the order the reference (trainer-svc keys) and docs/CONFIGURATION.md
# give them. TrainConfig inherits them all: its keys stay flat in the YAML, and one validation
# reports every bad key at once.
KEY_GROUPS: tuple[tuple[str, type[Keys]], ...] = (
    ("model", ModelKeys),
    ("data", DataKeys),
    ("training", TrainingKeys),
    ("evaluation and output", OutputKeys),
    ("selection", SelectionKeys),
    ("scorer", ScorerKeys),
)


# Bases in reverse: pydantic orders the fields from the last base to the first.
class TrainConfig(ScorerKeys, SelectionKeys, OutputKeys, TrainingKeys, DataKeys, ModelKeys):
    """Every key the trainer reads, with its default; the single place defaults live."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def key_group(name: str) -> str:
    """The group of TrainConfig's key `name`."""
    for group, keys in KEY_GROUPS:
        if name in keys.model_fields:
            return group
    raise KeyError(name)


def tracker_problem(name: str) -> str | None:
    """What stops report_to's tracker `name` from starting in this environment, if anything."""
    if name not in TRACKERS:
        near = difflib.get_close_matches(name.lower(), TRACKERS, n=1, cutoff=0.7)
        said = f"did you mean {near[0]}? " if near else ""
        return (
            f"{name!r} is not a tracker: {said}give none, all, or trackers among "
            f"{', '.join(TRACKERS)}"
        )
    missing = [
        package
        for package in TRACKERS[name]
        if not any(
            importlib.util.find_spec(module) is not None
            for module in PACKAGE_MODULES.get(package, (package,))
        )
    ]
    if missing:
        packages = " ".join(missing)
        return (
            f"{name} needs {packages}, not installed here: pip install {packages} "
            f"(or remove {name})"
        )
    if name == "kubeflow" and not os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"):
        return "kubeflow reports to $KUBEFLOW_TRAINER_SERVER_URL, which is unset"
    return None


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config and what was resolved while checking it (no model is loaded yet)."""

    config: TrainConfig
    window_size: float
    dataset: DatasetSpec  # as the scorer reads it: names and paths that resolve anywhere
    samples: list[Sample]  # the training samples (without a val_size split's)
    eval_dataset: DatasetSpec | None
    eval_samples: list[Sample] | None  # eval_dataset's, or the val_size split's
    world_size: int
    deepspeed: Path | None = None
    fsdp_config: dict[str, Any] | None = None  # read from its file when a path was given

    @property
    def batch(self) -> int:
        """B: samples per optimizer step over all processes."""
        cfg = self.config
        return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * self.world_size

    def schedule(self) -> Schedule:
        """The run's schedule: its segments, updates and max_steps."""
        cfg = self.config
        return Schedule.build(
            warmup_step=cfg.warmup_step,
            update_step=cfg.update_step,
            update_times=cfg.update_times,
            batch=self.batch,
            epochs=cfg.num_train_epochs,
            train_step=cfg.train_step,
        )


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

# Where an unknown key's message sends the reader for the keys there are.
KEYS_DOCUMENTED = "the keys: docs/CONFIGURATION.md"
TRAINER_KEYS_DOCUMENTED = "trainer-svc keys lists the keys; docs/CONFIGURATION.md explains them"


def validate_keys(
    model: type[M], raw: dict[str, Any], where: str = KEYS_DOCUMENTED
) -> tuple[M, dict[str, str]]:
    """The keys model knows, validated: (the config, problems by key). A key the model does not
    know is a problem too (with the nearest known key, if one is near): a key left unread would
    let the run differ from what its config says. With problems the config is partial, for the
    checks that follow to name theirs too: the valid keys, defaults for the others, a required
    key that failed left unset (read it with getattr). `where` says where the keys are listed."""
    known = set(model.model_fields)
    problems = {key: unknown_key(key, known, where) for key in sorted(set(raw) - known)}
    values = {k: v for k, v in raw.items() if k in known}
    try:
        return model.model_validate(values), problems
    except ValidationError as exc:
        problems.update(problems_by_key(exc.errors(), values))
    valid = {key: value for key, value in values.items() if key not in problems}
    return model.model_construct(**valid), problems


# Keys of LLaMA-Factory's and transformers' configs that mean something this tool reads under
# another key (or does anyway), and what to write instead.
KEY_ADVICE = {
    "warmup_steps": "the learning-rate warmup is warmup_ratio here (warmup_step is the "
    "selection's warmup segment)",
    "max_steps": "give train_step (the run's optimizer steps)",
    "disable_gradient_checkpointing": "gradient checkpointing is off unless "
    "gradient_checkpointing is true",
    "evaluation_strategy": "give eval_strategy",
    "save_strategy": "a checkpoint is saved every save_steps",
    "logging_strategy": "the loss is logged every logging_steps",
    "data_seed": "seed orders the data too",
    "mix_strategy": "the datasets of a comma list are concatenated in order",
    "interleave_probs": "the datasets of a comma list are concatenated in order",
    "disable_shuffling": "each segment's draw is shuffled, seeded by seed",
}


def unknown_key(key: str, known: set[str], where: str = KEYS_DOCUMENTED) -> str:
    advice = KEY_ADVICE.get(key)
    if advice is None:
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.85)
        advice = f"did you mean {near[0]}?" if near else ""
    said = f"{advice} " if advice else ""
    return f"not a key this tool reads: {said}remove it ({where})"


def parse_config(raw: dict[str, Any], base_dir: Path | None = None) -> LoadedConfig:
    """Validate everything that can be checked without a model; one error for all problems:
    files are read and keys checked together also when some keys are bad alone."""
    cfg, problems = validate_keys(TrainConfig, raw, TRAINER_KEYS_DOCUMENTED)
    window_size = _window_size(cfg, base_dir, problems)
    world_size = _world_size(cfg, problems)
    deepspeed = _deepspeed(cfg, base_dir, problems)
    fsdp_config = _fsdp(cfg, base_dir, world_size, problems)
    dataset, samples = _dataset(cfg, "dataset", base_dir, problems)
    eval_dataset, eval_samples = (None, None)
    if getattr(cfg, "eval_dataset", None):
        eval_dataset, eval_samples = _dataset(cfg, "eval_dataset", base_dir, problems)
    elif samples is not None and cfg.val_size and "val_size" not in problems:
        try:
            samples, eval_samples = split_validation(samples, cfg.val_size, cfg.seed)
        except DatasetError as exc:
            problems["val_size"] = str(exc)
    later = combination_problems(cfg)
    if samples is not None:
        later.update(size_problems(cfg, len(samples), world_size))
    problems.update({k: v for k, v in later.items() if k not in problems})
    if problems or dataset is None or samples is None:
        raise ConfigError(problems)
    _note_ignored(cfg)
    return LoadedConfig(
        cfg, window_size, dataset, samples, eval_dataset, eval_samples, world_size, deepspeed,
        fsdp_config,
    )  # fmt: skip


# Keys LLaMA-Factory's and DataFlex's configs carry that change nothing here, and why.
NO_EFFECT = {
    "overwrite_cache": "tokenization is not cached",
    "preprocessing_num_workers": "tokenization runs in the trainer's process",
    "do_eval": "eval_dataset or val_size turns evaluation on",
}


def _note_ignored(cfg: TrainConfig) -> None:
    given = [key for key in NO_EFFECT if key in cfg.model_fields_set]
    for key in given:
        logger.info("%s has no effect here: %s", key, NO_EFFECT[key])
    if cfg.train_step and cfg.num_train_epochs != 1:
        logger.warning(
            "train_step is %d: the run trains that many optimizer steps and num_train_epochs "
            "(%g) is ignored",
            cfg.train_step,
            cfg.num_train_epochs,
        )


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_local(name: str) -> bool:
    """A path that does not exist is local (an error) unless it reads as a hub id org/name."""
    if not HUB_ID.match(name):
        return True
    return Path(name.split("/")[0]).exists()


def cached_hub_model(name: str) -> Path | None:
    """The local snapshot folder of hub model id `name` in the Hugging Face cache, if its
    config.json is there (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def resolve_base_model(name: str) -> str:
    """A base model as both services load it: a local folder's absolute path, or the cached
    snapshot folder of a hub id (a scorer started elsewhere finds the same folder)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    cached = cached_hub_model(name) if HUB_ID.match(name) else None
    return str(cached) if cached is not None else name


def base_model_problem(name: str) -> str | None:
    """What is wrong with a base model: a local path must be a model folder; a hub id must be
    in the local Hugging Face cache (nothing is downloaded at run time)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"{name} has no config.json (not a model directory)"
    elif path.exists() or _looks_local(name):
        return f"{name} does not exist (or is not a directory)"
    elif cached_hub_model(name) is None:
        return (
            f"{name} is neither a local model folder nor in the Hugging Face cache; this tool "
            f"loads models from disk only: download it first (hf download {name}) "
            "or give the path of a folder that holds it"
        )
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
    if cfg.pure_bf16 and cfg.fp16:
        problems["pure_bf16"] = "pure_bf16 trains bfloat16 weights: use it with bf16, not fp16"
    problems.update(model_problems(cfg))
    problems.update(data_problems(cfg))
    if cfg.eval_steps is not None and not (cfg.eval_dataset or cfg.val_size):
        problems["eval_steps"] = (
            "needs eval_dataset or val_size (the data the evaluation loss is taken on)"
        )
    targets = _target_list(cfg.lora_target)
    if cfg.finetuning_type == "lora" and not targets:
        problems["lora_target"] = "name at least one module, or 'all'"
    elif len(targets) > MAX_TARGET_MODULES or any(len(t) > MAX_NAME_CHARS for t in targets):
        problems["lora_target"] = (
            f"at most {MAX_TARGET_MODULES} module names of at most {MAX_NAME_CHARS} characters"
        )
    output_dir = getattr(cfg, "output_dir", None)  # unset in a config with it missing
    if output_dir is not None and (problem := unwritable(Path(output_dir))):
        problems["output_dir"] = problem
    holds_a_run = output_dir is not None and (Path(output_dir) / "selections.jsonl").exists()
    if holds_a_run and not (cfg.overwrite_output_dir or cfg.resume_from_checkpoint):
        problems["overwrite_output_dir"] = (
            f"{output_dir} already holds a run; set overwrite_output_dir: true "
            "or resume_from_checkpoint"
        )
    return problems


def unwritable(path: Path) -> str | None:
    """Why this user cannot write path (or make it), or None when it can."""
    existing = path.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    what = "is not a folder" if not existing.is_dir() else "is not writable"
    return (
        f"{existing} {what} for this user (uid {os.getuid()}), so {path} cannot be written: "
        "choose another output_dir, or give this user the folder (in a container, create the "
        "host folder before mounting it, owned by the uid the container runs as)"
    )


def model_problems(cfg: TrainConfig) -> dict[str, str]:
    """Quantization and attention keys this machine, or this kind of run, cannot honour."""
    import torch

    cuda = torch.cuda.is_available()
    problems: dict[str, str] = {}
    if cfg.quantization_bit is not None and cfg.finetuning_type != "lora":
        problems["quantization_bit"] = "a quantized base model trains LoRA adapters only"
    elif problem := quantization_problem(cfg.quantization_bit, cuda):
        problems["quantization_bit"] = problem
    if problem := attention_problem(ATTENTION[cfg.flash_attn], cuda):
        problems["flash_attn"] = problem
    mixed = cfg.bf16 or cfg.fp16 or cfg.pure_bf16
    if cfg.finetuning_type == "full" and cfg.flash_attn in ("fa2", "fa3") and not mixed:
        problems["bf16"] = (
            f"flash_attn {cfg.flash_attn} computes in bfloat16 or float16, and full "
            "fine-tuning trains float32 master weights: set bf16: true (or fp16, or pure_bf16)"
        )
    return problems


def data_problems(cfg: TrainConfig) -> dict[str, str]:
    """Data and evaluation keys that contradict each other or this tool."""
    problems: dict[str, str] = {}
    for key in ("packing", "neat_packing"):
        if getattr(cfg, key):
            problems[key] = (
                "packing is not supported: each sample's loss is scored on its own; remove it"
            )
    if cfg.val_size and cfg.eval_dataset:
        problems["val_size"] = "give eval_dataset or val_size, not both"
    has_eval_data = bool(cfg.eval_dataset) or cfg.val_size > 0
    if cfg.load_best_model_at_end:
        if not has_eval_data:
            problems["load_best_model_at_end"] = "needs eval_dataset or val_size"
        elif cfg.eval_strategy == "no":
            problems["load_best_model_at_end"] = "needs evaluation, but eval_strategy is 'no'"
        elif not cfg.eval_steps or cfg.save_steps % cfg.eval_steps:
            problems["load_best_model_at_end"] = (
                f"needs eval_steps, with save_steps ({cfg.save_steps:g}) a multiple of it"
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


# DataFlex's components file groups its entries by kind (DataFlex 1.1.0: selectors, mixers,
# weighters); the seed's guide writes the selector's entry at the top level. Both are read.
COMPONENT_SECTION = "selectors"
OTHER_SECTIONS = ("mixers", "weighters")


def component_entry(components: Any, name: str, path: Path) -> tuple[dict[str, Any] | None, str]:
    """The entry `name` of a components file, from its `selectors:` section or its top level,
    else None and what is wrong."""
    if not isinstance(components, dict):
        return None, f"{path} must hold a mapping of components (selectors: {name}: ...)"
    section = components.get(COMPONENT_SECTION)
    if isinstance(section, dict) and isinstance(section.get(name), dict):
        return section[name], ""
    if name not in OTHER_SECTIONS and isinstance(components.get(name), dict):
        return components[name], ""
    elsewhere = [
        kind
        for kind in OTHER_SECTIONS
        if isinstance(components.get(kind), dict) and name in components[kind]
    ]
    if elsewhere:
        return None, (
            f"{path} lists '{name}' under {elsewhere[0]}:, not {COMPONENT_SECTION}:; this "
            f"trainer selects samples (train_type: dynamic_select), so the entry belongs under "
            f"{COMPONENT_SECTION}:"
        )
    known = (
        sorted(section)
        if isinstance(section, dict)
        else sorted(key for key, value in components.items() if isinstance(value, dict))
    )
    listed = f" (it lists {', '.join(map(str, known))})" if known else ""
    return None, (
        f"{path} has no entry '{name}' under {COMPONENT_SECTION}: or at its top level{listed}; "
        f"add one: {COMPONENT_SECTION}: {{{name}: {{name: {name}, params: {{window_size: 0.2}}}}}}"
    )


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
    entry, problem = component_entry(components, component, path)
    if entry is None:
        problems["component_name"] = problem
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


def _deepspeed(cfg: TrainConfig, base_dir: Path | None, problems: dict[str, str]) -> Path | None:
    """The DeepSpeed config file, when one is given and can be honoured."""
    name = getattr(cfg, "deepspeed", None)
    if not name:
        return None
    if importlib.util.find_spec("deepspeed") is None:
        problems["deepspeed"] = "DeepSpeed is not installed: pip install deepspeed, or remove it"
        return None
    path = _find_file(name, base_dir)
    if path is None:
        problems["deepspeed"] = f"{name} does not exist"
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        stage = int((body.get("zero_optimization") or {}).get("stage", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        problems["deepspeed"] = f"{path} is not a DeepSpeed JSON config: {exc}"
        return None
    if stage == 3:
        problems["deepspeed"] = (
            "ZeRO stage 3 shards every parameter across ranks, but each checkpoint sent to the "
            "scorer needs them whole, and ZeRO-3's gather is not wired: use ZeRO stage 0, 1 or "
            "2, or shard with fsdp instead (full fine-tuning, see docs/GPUS.md)"
        )
        return None
    return path.resolve()


# The fsdp options of TrainingArguments FSDP2 takes (the other sharding strategies are FSDP1's).
FSDP_OPTIONS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")
# The fsdp_config settings TrainingArguments reads for FSDP2 (without their optional fsdp_
# prefix).
FSDP_SETTINGS = (
    "version", "reshard_after_forward", "cpu_offload", "activation_checkpointing",
    "cpu_ram_efficient_loading", "state_dict_type", "auto_wrap_policy",
    "transformer_layer_cls_to_wrap", "min_num_params",
)  # fmt: skip


def _fsdp(
    cfg: TrainConfig, base_dir: Path | None, world: int, problems: dict[str, str]
) -> dict[str, Any] | None:
    """fsdp_config as a mapping (read from its file), when fsdp can be honoured: full
    fine-tuning, several processes, FSDP2 options and settings."""
    fsdp, given = getattr(cfg, "fsdp", None), getattr(cfg, "fsdp_config", None)
    if not fsdp:
        if given:
            problems["fsdp_config"] = "has no effect without fsdp: set fsdp: true, or remove it"
        return None
    if problem := _fsdp_problem(cfg, fsdp, world):
        problems["fsdp"] = problem
    if not given:
        return None
    settings = _fsdp_settings(given, base_dir)
    if isinstance(settings, str):
        problems["fsdp_config"] = settings
        return None
    if problem := _fsdp_settings_problem(settings, cfg):
        problems["fsdp_config"] = problem
    return settings


def _fsdp_problem(cfg: TrainConfig, fsdp: bool | str | list[str], world: int) -> str | None:
    """What stops fsdp in this run: LoRA, one process, DeepSpeed, an option of FSDP1's."""
    if cfg.finetuning_type != "full":
        return (
            "FSDP is wired for finetuning_type: full only: a LoRA checkpoint would need its "
            "adapters gathered apart from the frozen base, which is not done; LoRA trains "
            "with data-parallel DDP under torchrun: remove fsdp"
        )
    processes = launched_processes(world)
    if processes == 1:
        return (
            "FSDP shards the model across processes, and this run has one: launch it under "
            "torchrun with several (FORCE_TORCHRUN=1 NPROC_PER_NODE=2, see docs/GPUS.md), or "
            "remove fsdp"
        )
    if getattr(cfg, "deepspeed", None):
        return "fsdp and deepspeed cannot both be set: keep one"
    options = fsdp.split() if isinstance(fsdp, str) else fsdp if isinstance(fsdp, list) else []
    odd = [option for option in options if option not in FSDP_OPTIONS]
    if odd:
        return (
            f"{', '.join(odd)}: not an FSDP2 option; give true, or among {', '.join(FSDP_OPTIONS)}"
        )
    return None


def _fsdp_settings(given: dict[str, Any] | str, base_dir: Path | None) -> dict[str, Any] | str:
    """fsdp_config as a mapping, read from its JSON or YAML file when it names one; or what is
    wrong with it."""
    if isinstance(given, dict):
        return dict(given)
    path = _find_file(given, base_dir)
    if path is None:
        return f"{given} does not exist: give a mapping, or a JSON or YAML file holding one"
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return f"{path} is neither JSON nor YAML: {exc}"
    if not isinstance(settings, dict):
        return f"{path} must hold a mapping of FSDP settings"
    return settings


def _fsdp_settings_problem(settings: dict[str, Any], cfg: TrainConfig) -> str | None:
    """What in fsdp_config FSDP2 would not honour here, or what contradicts another key."""
    plain = {str(key).removeprefix("fsdp_"): value for key, value in settings.items()}
    unknown = sorted(set(plain) - set(FSDP_SETTINGS))
    if unknown:
        return (
            f"{', '.join(unknown)}: not FSDP2 settings (FSDP1's and XLA's are not taken "
            f"here); give among {', '.join(FSDP_SETTINGS)}"
        )
    if str(plain.get("version", 2)) != "2":
        return (
            "version 2 (FSDP2, the default) only: FSDP1 is deprecated by transformers and its "
            "checkpoints are not gathered here"
        )
    if str(plain.get("state_dict_type", "FULL_STATE_DICT")) != "FULL_STATE_DICT":
        return (
            "state_dict_type FULL_STATE_DICT only: the trained model is saved as one "
            "model.safetensors from the full state dict"
        )
    if str(plain.get("activation_checkpointing", False)).lower() == "true" and getattr(
        cfg, "gradient_checkpointing", False
    ):
        return (
            "activation_checkpointing here and gradient_checkpointing: true cannot both be "
            "set; keep FSDP's own (the other gathers the parameters again in the backward pass)"
        )
    return None


def launched_processes(world: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """The processes that will train: torchrun's world size, or before FORCE_TORCHRUN starts
    torchrun, NPROC_PER_NODE x NNODES (NPROC_PER_NODE unset: every GPU, or one). None where
    torchrun's own words say it (gpu, auto): the ranks check again once started."""
    forced = environ.get("FORCE_TORCHRUN", "").lower() in ("1", "true", "yes")
    if world > 1 or not forced or "RANK" in environ:
        return world
    nproc = environ.get("NPROC_PER_NODE")
    if nproc is None:
        import torch

        nproc = str(max(1, torch.cuda.device_count()))
    try:
        return int(nproc) * int(environ.get("NNODES", "1"))
    except ValueError:
        return None


def _world_size(cfg: TrainConfig, problems: dict[str, str]) -> int:
    """torchrun's WORLD_SIZE (1 without it)."""
    world = Launch.from_environment().world
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
) -> tuple[DatasetSpec | None, list[Sample] | None]:
    """The datasets `key` names, as a spec that reads the same files from any working
    directory (a relative file path is tried from the working directory, then from the
    config's folder), and their samples."""
    names = getattr(cfg, key, None)
    if not names:
        return None, None
    try:
        items = [_located(item, base_dir) for item in dataset_items(names)]
        spec = absolute_spec(DatasetSpec(",".join(items), cfg.dataset_dir, cfg.max_samples))
        if len(spec.names) > MAX_PATH_CHARS:
            raise DatasetError(
                f"the datasets resolve to {len(spec.names)} characters of names and absolute "
                f"paths, more than the {MAX_PATH_CHARS} a run's registration carries; list the "
                "files in a dataset_info.json entry (a folder as file_name) and name that"
            )
        samples = load_samples(spec)
    except DatasetError as exc:
        problems[key] = str(exc)
        return None, None
    return spec, samples


def _located(item: str, base_dir: Path | None) -> str:
    if not is_path(item) or Path(item).expanduser().is_file():
        return item
    found = _find_file(item, base_dir)
    return str(found.resolve()) if found is not None else item


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
