"""The Delta Loss training recipe, `trainer-svc train`: a thin script over a transformers
Trainer with DeltaLossSelection attached (trainer_svc.training.selection).

setup loads the tokenizer and the model (LoRA-wrapped or not), makes the TrainingArguments from
the config, the selection, the Trainer, attaches the selection and starts the run (registers it
with the scorer, or resumes it); train runs trainer.train(); save writes the adapter or model,
the trainer state, the metrics and the loss plot. What selects, records, resumes and stops is
the selection's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

from common.data.tokenization import EncodedSample, encode_dataset
from common.launch import Launch
from trainer_svc.config.train_config import LoadedConfig
from trainer_svc.scorer.client import ScorerClient
from trainer_svc.scorer.retry import ScorerFailure
from trainer_svc.training import precision
from trainer_svc.training.dataset import EncodedDataset
from trainer_svc.training.distributed import Ranks
from trainer_svc.training.records import LOSS_PLOT, eval_history
from trainer_svc.training.records import plot_loss as write_loss_plot
from trainer_svc.training.selection import DeltaLossSelection, model_spec
from trainer_svc.training.trainer import GracefulStop
from trainer_svc.training.updates import UpdateCoordinator

logger = logging.getLogger(__name__)


class DeltaLossRecipe:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        scorer: ScorerClient | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        handle_sigterm: bool = False,
    ):
        """scorer replaces the ZeroMQ and REST scorer (tests use delta_loss_devtools' FakeScorer);
        on_update is called with each update's record row; handle_sigterm: the selection also
        handles SIGTERM while it trains (run() handles it from the start)."""
        self.loaded = loaded
        self.scorer = scorer
        self.on_update = on_update
        self.handle_sigterm = handle_sigterm
        self.cfg = loaded.config
        # The process group first (torchrun), before the TrainingArguments set the device up.
        self.ranks = Ranks.start(Launch.from_environment(), self.cfg.ddp_timeout)
        self.stop = GracefulStop(self.ranks)  # SIGTERM, once run() installs it; the selection's
        self.selection: DeltaLossSelection | None = None
        self.output_dir = Path(self.cfg.output_dir)
        self.spec = model_spec(self.cfg)
        self.schedule = loaded.schedule()
        self.upcast: dict[str, torch.dtype] = {}  # trainable tensors made float32, as loaded

    # ---- setup ----
    def setup(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.spec.base_model, trust_remote_code=self.cfg.trust_remote_code
        )
        self.model = self._load_model()
        args = self._training_args()
        self.selection = selection = DeltaLossSelection(
            self.loaded, model=self.model, tokenizer=self.tokenizer, args=args,
            scorer=self.scorer, on_update=self.on_update, handle_sigterm=self.handle_sigterm,
            stop=self.stop,
        )  # fmt: skip
        self.trainer = Trainer(
            model=self.model,
            args=args,
            train_dataset=selection.train_dataset,
            eval_dataset=self._eval_dataset(),
            data_collator=selection.data_collator,
            processing_class=self.tokenizer,
        )
        self._upcast()
        selection.wire_dtypes = precision.wire_dtypes(self.model, self.upcast)  # as stored
        selection.attach(self.trainer)
        selection.start(self.cfg.resume_from_checkpoint)
        self.scorer = selection.scorer

    def _load_model(self) -> torch.nn.Module:
        # Seeded before the model is built: LoRA's random initialisation (and anything else
        # drawn while loading) is then the same in every run with the same seed. Trainer seeds
        # again itself, but only after the model exists.
        set_seed(self.cfg.seed)
        if self.cfg.pure_bf16:
            logger.info("pure_bf16: the trained weights and optimizer states stay bfloat16")
            return self.spec.build(dtype=torch.bfloat16)
        return self.spec.build()

    def _upcast(self) -> None:
        """Trainable bfloat16/float16 weights made float32 master weights (not for
        pure_bf16), once the Trainer has placed the model on its device: no float32 copy of
        the model passes through host memory."""
        if self.cfg.pure_bf16:
            return
        self.upcast = precision.upcast_trainable(self.model)
        if not self.upcast:
            return
        logger.info(
            "%s upcast to float32: master weights for mixed precision (pure_bf16: true keeps "
            "them bfloat16)", precision.describe(self.upcast),
        )  # fmt: skip
        if torch.cuda.is_available() and not (self.cfg.bf16 or self.cfg.fp16):
            logger.warning(
                "neither bf16 nor fp16 is set: training computes in float32, slower and with "
                "twice the activation memory of bf16: true (mixed precision)"
            )

    def _training_args(self) -> TrainingArguments:
        cfg = self.cfg
        evaluate = self.loaded.eval_samples is not None and cfg.eval_strategy != "no"
        fsdp: dict[str, Any] = {}
        if cfg.fsdp:  # FSDP2 for full fine-tuning under torchrun (checked with the config)
            settings = self.loaded.fsdp_config  # a copy: TrainingArguments rewrites its own
            fsdp = {"fsdp": cfg.fsdp, "fsdp_config": dict(settings) if settings else None}
        return TrainingArguments(
            output_dir=str(self.output_dir),
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            learning_rate=cfg.learning_rate,
            max_steps=self.schedule.max_steps,
            lr_scheduler_type=cfg.lr_scheduler_type,
            warmup_steps=cfg.warmup_ratio,
            logging_steps=cfg.logging_steps,
            save_steps=cfg.save_steps,
            save_only_model=cfg.save_only_model,
            bf16=cfg.bf16,
            fp16=cfg.fp16,
            ddp_timeout=cfg.ddp_timeout,
            max_grad_norm=cfg.max_grad_norm,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_epsilon=cfg.adam_epsilon,
            optim=cfg.optim,
            **checkpointing_arguments(cfg.gradient_checkpointing),
            save_total_limit=cfg.save_total_limit,
            deepspeed=str(self.loaded.deepspeed) if self.loaded.deepspeed else None,
            metric_for_best_model=cfg.metric_for_best_model,
            greater_is_better=cfg.greater_is_better,
            load_best_model_at_end=cfg.load_best_model_at_end,
            seed=cfg.seed,
            report_to=cfg.report_to,
            run_name=cfg.run_name,  # the trackers' run name (None: transformers' default)
            dataloader_num_workers=0,
            remove_unused_columns=False,
            ignore_data_skip=True,  # the sampler starts at the resumed step itself
            use_cpu=not torch.cuda.is_available(),
            # eval_dataset: eval_loss at step 0, every eval_steps and at the last step, in
            # log_history as Trainer logs it (the last step is evaluated even off the interval)
            eval_strategy="steps" if evaluate else "no",
            eval_steps=cfg.eval_steps or self.schedule.max_steps,
            eval_on_start=evaluate,
            per_device_eval_batch_size=cfg.per_device_eval_batch_size,
            prediction_loss_only=True,  # the loss only: no logits kept for the whole eval set
            **fsdp,
        )

    def _eval_dataset(self) -> EncodedDataset | None:
        if self.loaded.eval_samples is None:
            return None
        assert self.selection is not None
        encoded = encode_dataset(self.tokenizer, self.loaded.eval_samples, self.selection.settings)
        return EncodedDataset(encoded, with_index=False)  # evaluated, never recorded

    # ---- what the selection holds ----
    @property
    def run_id(self) -> str:
        assert self.selection is not None
        return self.selection.run_id

    @property
    def encoded(self) -> list[EncodedSample]:
        assert self.selection is not None
        return self.selection.encoded

    @property
    def coordinator(self) -> UpdateCoordinator | None:
        """Rank 0's, once set up."""
        return self.selection.coordinator if self.selection is not None else None

    @property
    def stopped(self) -> bool:
        """Stopped by a signal before the last step (its checkpoint holds the state)."""
        return self.selection is not None and self.selection.stopped

    @property
    def stop_checkpoint(self) -> Path:
        assert self.selection is not None
        return self.selection.stop_checkpoint

    # ---- train ----
    def train(self) -> None:
        logger.info(
            "training %d steps: E=%d (warmup %d + %d x %d), B=%d, %s selection",
            self.schedule.max_steps,
            self.schedule.epoch_len,
            self.cfg.warmup_step,
            self.cfg.update_times,
            self.cfg.update_step,
            self.schedule.batch,
            self.cfg.selection_mode,
        )
        result = self.trainer.train(resume_from_checkpoint=self.cfg.resume_from_checkpoint)
        if self.stopped:
            return
        self.trainer.log_metrics("train", result.metrics)
        self.trainer.save_metrics("train", result.metrics)
        evals = eval_history(self.trainer.state.log_history)
        if evals:
            metrics = {k: v for k, v in evals[-1].items() if k != "step"}  # as evaluate() gives
            self.trainer.log_metrics("eval", metrics)
            self.trainer.save_metrics("eval", metrics)
            logger.info(
                "eval loss %.4f at step %d, %.4f at step %d",
                evals[0]["eval_loss"],
                evals[0]["step"],
                evals[-1]["eval_loss"],
                evals[-1]["step"],
            )

    # ---- save ----
    def save(self) -> None:
        if self.stopped:  # not the finished model: the checkpoint the stop saved resumes
            return
        assert self.selection is not None
        self.trainer.save_model(str(self.output_dir))
        self.trainer.save_state()
        unsent = self.selection.unsent_at_end
        if self.cfg.plot_loss and self.ranks.is_main:
            updates = [segment.start for segment in self.schedule.updates()]
            path = write_loss_plot(
                self.trainer.state.log_history, self.output_dir / LOSS_PLOT, updates
            )
            if path:
                logger.info("loss plot: %s", path)
        logger.info("saved to %s", self.output_dir)
        if unsent is not None:  # on_scorer_failure: fail, for the last checkpoint sent
            raise ScorerFailure(f"{unsent}; the trained model is saved in {self.output_dir}")

    def report_end(self, error: BaseException | None) -> None:
        """Tell the scorer the run finished, or failed and why (the selection's)."""
        if self.selection is not None:
            self.selection.report_end(error)

    # ---- cleanup ----
    def cleanup(self) -> None:
        try:
            if self.selection is not None:
                self.selection.close()  # a send in flight is cancelled first
            elif self.scorer is not None:
                self.scorer.close()
        finally:
            self.ranks.close()


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """TrainingArguments' recomputation of activations, under the names this transformers
    takes: activation_checkpointing where it has it (gradient_checkpointing is deprecated
    there), else gradient_checkpointing. Not re-entrant: it works with a frozen base (LoRA)
    without inputs that need gradients."""
    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {
        f"{prefix}_checkpointing": enabled,
        f"{prefix}_checkpointing_kwargs": {"use_reentrant": False},
    }


def run(loaded: LoadedConfig, *, handle_sigterm: bool = False, **hooks) -> DeltaLossRecipe:
    """handle_sigterm: SIGTERM saves a checkpoint at the end of the current step and stops
    (`recipe.stopped` then says so); the command line sets it."""
    recipe = DeltaLossRecipe(loaded, handle_sigterm=handle_sigterm, **hooks)
    with recipe.stop.handling() if handle_sigterm else nullcontext():
        try:
            recipe.setup()
            recipe.train()
            recipe.save()
        except BaseException as exc:
            recipe.report_end(exc)
            raise
        else:
            recipe.report_end(None)
        finally:
            recipe.cleanup()
    return recipe
