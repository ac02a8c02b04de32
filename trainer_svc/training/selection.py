"""Delta Loss selection for your own transformers Trainer, through the scorer.

    selection = DeltaLossSelection(
        {"dataset": "alpaca_en_demo", "dataset_dir": "data", "template": "llama3",
         "warmup_step": 10, "update_step": 10, "update_times": 5},
        model=model, tokenizer=tokenizer, args=args,
    )
    trainer = Trainer(model=model, args=args, train_dataset=selection.train_dataset,
                      data_collator=selection.data_collator)
    selection.attach(trainer)
    trainer.train()
    selection.close()

The selection keys are trainer-svc's config keys for the data, the schedule and the scorer;
batch size, epochs, steps, seed and output_dir come from your TrainingArguments, and the LoRA
settings (or full fine-tuning) from your model. `attach` makes the Trainer train each step on
the samples the schedule draws and adds the callback that sends each update's checkpoint and
draws the next segment; selections.jsonl and trained_samples.jsonl are written to
args.output_dir as trainer-svc writes them.
"""

from __future__ import annotations

import logging
import secrets
import time
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from common.data.tokenization import TokenizationSettings, encode_dataset
from common.launch import Launch
from common.model_spec import (
    LoraSettings,
    ModelSpec,
    checkpoint_digest,
    checkpoint_tensors,
    pad_id,
)
from common.wire.errors import ProtocolError
from common.wire.hello import build_hello
from trainer_svc.config.train_config import (
    ConfigError,
    LoadedConfig,
    parse_config,
    resolve_base_model,
)
from trainer_svc.scorer.client import RemoteScorer, ScorerClient, scorer_failed
from trainer_svc.scorer.retry import ScorerFailure
from trainer_svc.training import precision
from trainer_svc.training.dataset import INDEX_KEY, EncodedDataset, PadCollator
from trainer_svc.training.distributed import Ranks
from trainer_svc.training.recipe import run_stem
from trainer_svc.training.records import SELECTIONS, TRAINED, JsonlRecord, TrainedSamples
from trainer_svc.training.sampler import ScheduleBatchSampler, SelectionPlan
from trainer_svc.training.trainer import GracefulStop, SelectionCallback
from trainer_svc.training.updates import SharedUpdates, UpdateCoordinator, log_selection

logger = logging.getLogger(__name__)

# The trainer-svc config keys a selection takes; the others come from TrainingArguments and
# the model.
SELECTION_KEYS = frozenset(
    {
        "dataset", "dataset_dir", "max_samples", "template", "cutoff_len", "trust_remote_code",
        "train_type", "components_cfg_file", "component_name", "warmup_step", "update_step",
        "update_times", "run_id", "scorer_zmq_url", "scorer_http_url", "scorer_token",
        "scorer_ca_file", "scorer_curve_secret_key_file", "scorer_curve_server_key_file",
        "selection_mode", "score_budget", "scorer_wait_seconds", "on_scorer_failure",
    }
)  # fmt: skip


class DeltaLossSelection:
    """The schedule, the scorer link and the records of one run trained by your Trainer."""

    def __init__(
        self,
        selection: dict[str, Any],
        *,
        model: torch.nn.Module,
        tokenizer: Any,
        args: TrainingArguments,
        scorer: ScorerClient | None = None,
    ):
        """scorer replaces the ZeroMQ and REST scorer (tests use a FakeScorer,
        delta_loss_devtools.fake_scorer)."""
        self.spec = spec_of(model, trust_remote_code=bool(selection.get("trust_remote_code")))
        if low := precision.low_precision_trainable(model):
            logger.warning(
                "%s train without float32 master weights: at small learning rates most "
                "updates round to nothing; upcast the trainable parameters (p.data = "
                "p.data.float()) before the Trainer is made, unless pure bfloat16 is meant",
                precision.describe(low),
            )
        self.loaded = selection_config(selection, args, self.spec)
        cfg = self.loaded.config
        self.model = model
        self.args = args
        # the process group is the user's when their TrainingArguments made it: left up then
        self._owns_group = not (dist.is_available() and dist.is_initialized())
        self.ranks = Ranks.start(Launch.from_environment(), args.ddp_timeout or 1800)
        self.stop = GracefulStop(self.ranks)
        self.schedule = self.loaded.schedule()
        self.settings = TokenizationSettings(cfg.template, cfg.cutoff_len)
        encoded = encode_dataset(tokenizer, self.loaded.samples, self.settings)
        self.train_dataset = EncodedDataset(encoded)
        self.data_collator = PadCollator(pad_id(tokenizer))
        self.plan = SelectionPlan(self.schedule, len(encoded), args.seed)
        output_dir = Path(str(args.output_dir))
        main = self.ranks.is_main
        self.run_id: str = self.ranks.share(
            (cfg.run_id or _new_run_id(output_dir)) if main else None
        )
        self.scorer = scorer
        if main and self.scorer is None:
            self.scorer = RemoteScorer.from_config(cfg, self.run_id)
        self.hello = build_hello(
            run_id=self.run_id,
            spec=self.spec,
            dataset=self.loaded.dataset,
            tokenization=self.settings,
            encoded=encoded,
            window_size=self.loaded.window_size,
            update_times=cfg.update_times,
            vocab_size=len(tokenizer),
            model_digest=checkpoint_digest(model, self.spec.kind),
            run_token=secrets.token_hex(16),
            token=cfg.scorer_token,
            selection_mode=cfg.selection_mode,
            score_budget=cfg.score_budget,
        )
        coordinator = None
        record = None
        if main:
            assert self.scorer is not None
            record = JsonlRecord(output_dir / TRAINED, truncate=True)
            coordinator = UpdateCoordinator(
                run_id=self.run_id,
                kind=self.spec.kind,
                plan=self.plan,
                scorer=self.scorer,
                record=JsonlRecord(output_dir / SELECTIONS, truncate=True),
                mode=cfg.selection_mode,
                on_failure=cfg.on_scorer_failure,
            )
        self.coordinator = coordinator
        self.trained = TrainedSamples(record, self.ranks)
        self.callback = _RegisteringCallback(
            self,
            SelectionCallback(
                self.schedule,
                SharedUpdates(self.ranks, self.plan, coordinator),
                lambda: checkpoint_tensors(self.model, self.spec.kind),
                self.trained,
                self.stop,
            ),
        )

    @property
    def max_steps(self) -> int:
        return self.schedule.max_steps

    def attach(self, trainer: Trainer) -> Trainer:
        """Make `trainer` train the scheduled samples and run the updates; returns it."""
        if trainer.train_dataset is not self.train_dataset:
            raise ConfigError(
                {"train_dataset": "the Trainer must train selection.train_dataset: its sample "
                 "indices are the ones the scorer ranks"}
            )  # fmt: skip
        self.ranks.one_gpu(trainer.args)  # before train() would wrap it in DataParallel
        trainer._train_batch_size = trainer.args.train_batch_size  # as counted for one GPU
        if self.coordinator is not None and self.spec.kind == "full":
            # float32 master weights of a model stored in bfloat16 travel as stored
            self.coordinator.sender.snapshot.wire_dtypes = precision.stored_dtypes(self.model)
        if trainer.args.max_steps != self.schedule.max_steps:
            logger.info("max_steps set to the schedule's %d", self.schedule.max_steps)
            trainer.args.max_steps = self.schedule.max_steps
        sampler = ScheduleBatchSampler(
            self.plan, trainer.args.per_device_train_batch_size,
            rank=self.ranks.rank, world=self.ranks.world,
        )  # fmt: skip
        collate = _recording(trainer.data_collator, self.trained, lambda: trainer.state)

        def get_train_dataloader(_: Trainer) -> DataLoader:
            # Nothing reads batches ahead of the step that trains them (see ScheduledTrainer).
            return DataLoader(
                self.train_dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0,
                generator=torch.Generator().manual_seed(trainer.args.seed),
            )  # fmt: skip

        trainer.get_train_dataloader = types.MethodType(get_train_dataloader, trainer)  # type: ignore[method-assign]
        if self.coordinator is not None:  # each update's figures to report_to, as trainer-svc
            self.coordinator.on_update = lambda row: log_selection(trainer, row)
        trainer.add_callback(self.callback)
        trainer.add_callback(self.stop)  # after the updates: a failed update stops at its step
        return trainer

    def close(self) -> None:
        try:
            if self.coordinator is not None:
                self.coordinator.close()
            if self.scorer is not None:
                self.scorer.close()
        finally:
            if self._owns_group:
                self.ranks.close()


class _RegisteringCallback(TrainerCallback):
    """Registers the run with the scorer as training begins (rank 0; what stops it there stops
    every rank), then runs the updates. A failed update saves a checkpoint at its step and
    stops training (GracefulStop), and is raised when training ends."""

    def __init__(self, selection: DeltaLossSelection, updates: SelectionCallback):
        self.selection = selection
        self.updates = updates

    def on_train_begin(self, args, state, control, **kwargs):
        selection = self.selection
        if state.global_step > 0:
            raise ConfigError(
                {"resume_from_checkpoint": "DeltaLossSelection trains a run from its start; "
                 "trainer-svc train resumes runs (resume_from_checkpoint)"}
            )  # fmt: skip
        failure = None
        self.registered = False
        if selection.ranks.is_main and selection.scorer is not None:
            try:
                selection.scorer.register(selection.hello)
                self.registered = True
            except ProtocolError as exc:
                try:
                    scorer_failed(
                        selection.loaded.config.on_scorer_failure,
                        f"registering run {selection.run_id} with the scorer",
                        exc,
                        fallback="training goes on; updates the scorer cannot serve use "
                        "UNIFORM weights",
                    )
                except ScorerFailure as stop:
                    failure = str(stop)
        failure = selection.ranks.share(failure if selection.ranks.is_main else None)
        if failure is not None:
            raise ScorerFailure(failure)
        return self.updates.on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        return self.updates.on_step_end(args, state, control, **kwargs)

    def _report_end(self, state, failure: BaseException | None) -> None:
        """Tell the scorer the run finished, or failed and why (rank 0, once registered); a
        run stopped before its last step by a signal, to be resumed, has not ended."""
        scorer = self.selection.scorer
        if scorer is None or not getattr(self, "registered", False):
            return
        if failure is not None:
            scorer.end("failed", f"{type(failure).__name__}: {failure}")
        elif state.global_step >= state.max_steps:
            scorer.end("finished", f"trained {state.global_step} steps")

    def on_save(self, args, state, control, **kwargs):
        return self.updates.on_save(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self.updates.on_train_end(args, state, control, **kwargs)
        failure = self.selection.stop.failure or self.updates.unsent_at_end
        self._report_end(state, failure)
        if failure is not None:
            raise ScorerFailure(
                f"{failure}; the state at step {state.global_step} is saved in {args.output_dir}"
            ) from failure


def _recording(
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    trained: TrainedSamples,
    state: Callable[[], Any],
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The Trainer's collator on rows without their index; the indices are recorded under the
    step being trained (batches are fetched as their step starts)."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        trained.add(state().global_step, [row[INDEX_KEY] for row in rows])
        batch = collator([{k: v for k, v in row.items() if k != INDEX_KEY} for row in rows])
        batch.pop(INDEX_KEY, None)
        return batch

    return collate


# LoRA options that change what the scorer would build, or how it scales, with their defaults.
LORA_DEFAULTS = {
    "use_rslora": False, "use_dora": False, "bias": "none", "modules_to_save": None,
    "alpha_pattern": {}, "rank_pattern": {}, "layers_to_transform": None, "lora_bias": False,
    "fan_in_fan_out": False,
}  # fmt: skip
ATTENTIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


def spec_of(model: torch.nn.Module, *, trust_remote_code: bool = False) -> ModelSpec:
    """The model the scorer must build to score as this one: its base folder, attention and
    quantization, and its LoRA settings (a PEFT model) or full fine-tuning. What the scorer
    could not reproduce is refused."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name = str(getattr(base.config, "_name_or_path", "") or "")
    problems: dict[str, str] = {}
    if not name or not Path(resolve_base_model(name)).is_dir():
        problems["model"] = (
            f"its base ({name or 'unnamed'}) is not a folder on disk: load it with "
            "from_pretrained from a local folder (or the Hugging Face cache), which the scorer "
            "loads too"
        )
    attention = getattr(base.config, "_attn_implementation", None)
    bits, quantization = quantization_of(base)
    if quantization is not None:
        problems["model"] = quantization
    spec = ModelSpec(
        resolve_base_model(name), "full", None, trust_remote_code,
        attention if attention in ATTENTIONS else None, None,
    )  # fmt: skip
    if isinstance(model, PeftModel) and not problems:
        config = model.peft_config.get("default")
        if config is None or type(config).__name__ != "LoraConfig":
            problems["model"] = "a PEFT model needs one LoRA adapter named 'default'"
        else:
            odd = [
                key for key, default in LORA_DEFAULTS.items()
                if not _is_default(getattr(config, key, default), default)
            ]  # fmt: skip
            if odd:
                problems["model"] = (
                    f"LoRA options the scorer does not reproduce: {', '.join(odd)}; leave them "
                    "at their defaults"
                )
            elif (lora := _lora_settings(model, spec, config)) is None:
                problems["model"] = (
                    "its LoRA layers are not what LoRA on the modules it names builds: give "
                    "target_modules as module names or 'all-linear'"
                )
            else:
                spec = replace(spec, kind="lora", lora=lora, quantization_bit=bits)
    elif bits is not None and not problems:
        problems["model"] = "a quantized base model trains LoRA adapters only"
    if problems:
        raise ConfigError(problems)
    return spec


def _is_default(value: Any, default: Any) -> bool:
    """An option left at its default (an empty mapping and None alike)."""
    return value == default or (not value and not default)


def quantization_of(base: torch.nn.Module) -> tuple[int | None, str | None]:
    """(bits, problem): a bitsandbytes base as ModelSpec quantizes one (NF4 with double
    quantization for 4 bits, LLM.int8 for 8), or what the scorer could not reproduce."""
    config = getattr(base.config, "quantization_config", None)
    if config is None:
        return None, None
    values = config if isinstance(config, dict) else config.to_dict()
    if values.get("quant_method") != "bitsandbytes":
        return None, (
            f"a base quantized with {values.get('quant_method')} cannot be scored alike: "
            "quantize with bitsandbytes (4 or 8 bits) or not at all"
        )
    if values.get("load_in_8bit"):
        return 8, None
    if values.get("bnb_4bit_quant_type") != "nf4" or not values.get("bnb_4bit_use_double_quant"):
        return None, (
            "a 4-bit base is scored as NF4 with double quantization: load it with "
            "bnb_4bit_quant_type='nf4' and bnb_4bit_use_double_quant=True"
        )
    return 4, None


def _lora_settings(model: torch.nn.Module, spec: ModelSpec, config: Any) -> LoraSettings | None:
    """The LoRA settings that build this model's adapter tensors on the base: the modules'
    short names (peft matches names by suffix), else their full names, as resolved by peft."""
    targets = config.target_modules
    wanted = checkpoint_digest(model, "lora")
    choices = [targets] if isinstance(targets, str) else [
        sorted({t.rsplit(".", 1)[-1] for t in targets}), sorted(targets),
    ]  # fmt: skip
    for choice in choices:
        lora = LoraSettings(config.r, float(config.lora_alpha), config.lora_dropout, choice)
        candidate = replace(spec, kind="lora", lora=lora)
        if checkpoint_digest(candidate.skeleton(), "lora") == wanted:
            return lora
    return None


def selection_config(
    selection: dict[str, Any], args: TrainingArguments, spec: ModelSpec
) -> LoadedConfig:
    """trainer-svc's config for the selection keys, with what the TrainingArguments and the
    model decide filled in; a key that belongs to them is refused."""
    other = sorted(set(selection) - SELECTION_KEYS)
    if other:
        raise ConfigError(
            {key: "set by your TrainingArguments or model, or not a selection key" for key in other}
        )
    raw = {
        **selection,
        "model_name_or_path": spec.base_model,
        "finetuning_type": spec.kind,
        "output_dir": args.output_dir,
        "overwrite_output_dir": True,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_train_epochs": args.num_train_epochs,
        "train_step": max(args.max_steps, 0),
        "seed": args.seed,
        "ddp_timeout": args.ddp_timeout,
    }
    return parse_config(raw)


def _new_run_id(output_dir: Path) -> str:
    return f"{run_stem(output_dir.name)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


__all__ = ["DeltaLossSelection"]
