"""The Delta Loss training recipe: setup, train, save, cleanup, in that order.

setup loads the tokenizer, encodes the data, loads the model (LoRA-wrapped or not) and
registers the run with the scorer; train runs transformers' Trainer with the scheduled
dataloader and the update callback; save writes the adapter or model, the trainer state,
the metrics and the loss plot.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, TrainingArguments, set_seed
from transformers.trainer_utils import TrainOutput

from common.data.tokenization import TokenizationSettings, encode_dataset
from common.launch import Launch
from common.model_spec import (
    ATTENTION,
    LoraSettings,
    ModelSpec,
    checkpoint_digest,
    checkpoint_tensors,
    pad_id,
)
from common.wire.errors import ProtocolError, RunMismatch
from common.wire.hello import build_hello
from common.wire.protocol import Hello
from trainer_svc.config.train_config import LoadedConfig, TrainConfig, resolve_base_model
from trainer_svc.scorer.client import RemoteScorer, ScorerClient, scorer_failed
from trainer_svc.scorer.outage import Outage
from trainer_svc.scorer.retry import ScorerFailure, StopRequested
from trainer_svc.training import precision
from trainer_svc.training.dataset import EncodedDataset, PadCollator
from trainer_svc.training.distributed import Ranks
from trainer_svc.training.records import (
    LOSS_PLOT,
    SELECTIONS,
    TRAINED,
    JsonlRecord,
    TrainedSamples,
    eval_history,
    read_jsonl,
)
from trainer_svc.training.records import plot_loss as write_loss_plot
from trainer_svc.training.sampler import ScheduleBatchSampler, SelectionPlan
from trainer_svc.training.snapshot import load_unsent
from trainer_svc.training.trainer import GracefulStop, ScheduledTrainer, SelectionCallback
from trainer_svc.training.updates import SharedUpdates, UpdateCoordinator, log_selection

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"


class DeltaLossRecipe:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        scorer: ScorerClient | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ):
        """scorer replaces the ZeroMQ and REST scorer (tests use delta_loss_devtools' FakeScorer);
        on_update is called with each update's record row."""
        self.loaded = loaded
        self.scorer = scorer
        self.on_update = on_update
        self.cfg = loaded.config
        self.ranks = Ranks.start(Launch.from_environment(), self.cfg.ddp_timeout)
        self.stop = GracefulStop(self.ranks)  # SIGTERM, once run() installs it
        self.coordinator: UpdateCoordinator | None = None  # rank 0's, once set up
        self.output_dir = Path(self.cfg.output_dir)
        self.spec = model_spec(self.cfg)
        self.schedule = loaded.schedule()
        self.upcast: dict[str, torch.dtype] = {}  # trainable tensors made float32, as loaded
        self.refused = False  # the scorer refused the run (another run holds its id, ...)

    # ---- setup ----
    def setup(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        main = self.ranks.is_main
        named = list(self._run_identity()) if main else None  # run.json: rank 0's
        self.run_id, self.run_token = self.ranks.share(named)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.spec.base_model, trust_remote_code=self.cfg.trust_remote_code
        )
        self.settings = TokenizationSettings(self.cfg.template, self.cfg.cutoff_len)
        self.encoded = encode_dataset(self.tokenizer, self.loaded.samples, self.settings)
        self._warn_empty_labels()
        self.model = self._load_model()
        self._connect_scorer_once()
        if main:
            self._record_identity()
        self._build_trainer()

    def _run_identity(self) -> tuple[str, str]:
        """Configured, or kept from run.json when resuming, or new: dir name + time + random.
        The run's token (its identity at the scorer) is kept from run.json on a resume of the
        same run id, and new otherwise."""
        run_file = self.output_dir / RUN_FILE
        kept = {}
        if self.cfg.resume_from_checkpoint and run_file.is_file():
            kept = json.loads(run_file.read_text())
        if self.cfg.run_id:
            run_id = self.cfg.run_id
        elif "run_id" in kept:
            run_id = kept["run_id"]
        else:
            run_id = f"{run_stem(self.output_dir.name)}-{time.strftime('%Y%m%d-%H%M%S')}-" + (
                secrets.token_hex(2)
            )
        same_run = kept.get("run_id") == run_id and kept.get("run_token")
        run_token = kept["run_token"] if same_run else secrets.token_hex(16)
        logger.info("run id %s", run_id)
        return run_id, run_token

    def _record_identity(self) -> None:
        """run.json, written once the scorer has not refused the run: a start refused for
        reusing another run's id leaves that run's run.json, and so its resume, as it was."""
        run_file = self.output_dir / RUN_FILE
        if self.refused:
            logger.warning("%s left as it was: the scorer refused run %s", run_file, self.run_id)
            return
        run_file.write_text(json.dumps({"run_id": self.run_id, "run_token": self.run_token}) + "\n")

    def _warn_empty_labels(self) -> None:
        empty = [i for i, s in enumerate(self.encoded) if s.n_label_tokens == 0]
        if empty:
            logger.warning(
                "%d sample(s) keep no response token after cutoff_len=%d (first: %s); "
                "they have no loss and the scorer gives them weight 0",
                len(empty),
                self.cfg.cutoff_len,
                empty[:10],
            )

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

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint carries: LoRA's trainable tensors, or the full state dict."""
        return checkpoint_tensors(self.model, self.spec.kind)

    def hello(self) -> Hello:
        return build_hello(
            run_id=self.run_id,
            spec=self.spec,
            dataset=self.loaded.dataset,
            val_size=self.cfg.val_size,
            split_seed=self.cfg.seed,
            tokenization=self.settings,
            encoded=self.encoded,
            window_size=self.loaded.window_size,
            update_times=self.cfg.update_times,
            vocab_size=len(self.tokenizer),  # the scorer compares its own tokenizer's length
            model_digest=checkpoint_digest(self.model, self.spec.kind),
            run_token=self.run_token,
            token=self.cfg.scorer_token,
            selection_mode=self.cfg.selection_mode,
            score_budget=self.cfg.score_budget,
        )

    def _connect_scorer_once(self) -> None:
        """The scorer hears from rank 0 alone; what stops rank 0 there stops every rank."""
        outcome: dict[str, str] | None = None
        if self.ranks.is_main:
            try:
                self._connect_scorer()
                outcome = {}
            except StopRequested as exc:
                outcome = {"stop": str(exc)}
                self.ranks.share(outcome)
                raise
            except Exception as exc:
                outcome = {"failure": f"rank 0: {type(exc).__name__}: {exc}"}
                self.ranks.share(outcome)
                raise
        outcome = self.ranks.share(outcome)
        if "stop" in outcome:
            raise StopRequested(outcome["stop"])
        if "failure" in outcome:
            raise ScorerFailure(outcome["failure"])

    def _connect_scorer(self) -> None:
        """Registers the run, waiting for a scorer that is not up yet (SIGTERM stops the
        wait); a failure is handled as on_scorer_failure says."""
        if self.scorer is None:
            self.scorer = RemoteScorer.from_config(
                self.cfg, self.run_id, stop_requested=lambda: self.stop.requested
            )
        self.outage = Outage(self.scorer.ping)
        self.registered = False
        try:
            self.scorer.register(self.hello())
            self.registered = True
        except ProtocolError as exc:
            self.refused = isinstance(exc, RunMismatch)
            scorer_failed(
                self.cfg.on_scorer_failure,
                f"registering run {self.run_id} with the scorer at {self.cfg.scorer_zmq_url}",
                exc,
                fallback="training goes on; updates the scorer cannot serve use UNIFORM weights",
            )
            self.outage.note(exc, "registering the run")

    def _training_args(self) -> TrainingArguments:
        cfg = self.cfg
        evaluate = self.loaded.eval_samples is not None and cfg.eval_strategy != "no"
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
            gradient_checkpointing=cfg.gradient_checkpointing,
            # not re-entrant: works with a frozen base (LoRA) without inputs that need grads
            gradient_checkpointing_kwargs={"use_reentrant": False},
            save_total_limit=cfg.save_total_limit,
            deepspeed=str(self.loaded.deepspeed) if self.loaded.deepspeed else None,
            metric_for_best_model=cfg.metric_for_best_model,
            greater_is_better=cfg.greater_is_better,
            load_best_model_at_end=cfg.load_best_model_at_end,
            seed=cfg.seed,
            report_to=cfg.report_to,
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
        )

    def _build_trainer(self) -> None:
        fresh = not self.cfg.resume_from_checkpoint
        main = self.ranks.is_main
        self.plan = SelectionPlan(self.schedule, len(self.encoded), self.cfg.seed)
        coordinator = None
        trained_record = None
        if main:  # the records and the scorer are rank 0's
            selections = JsonlRecord(self.output_dir / SELECTIONS, truncate=fresh)
            trained_record = JsonlRecord(self.output_dir / TRAINED, truncate=fresh)
            assert self.scorer is not None, "setup connects the scorer first"
            coordinator = UpdateCoordinator(
                run_id=self.run_id,
                kind=self.cfg.finetuning_type,
                plan=self.plan,
                scorer=self.scorer,
                record=selections,
                mode=self.cfg.selection_mode,
                on_failure=self.cfg.on_scorer_failure,
                on_update=self._on_update,
                registered=self.registered,
                outage=self.outage,
                stop_requested=lambda: self.stop.requested,
            )
        self.coordinator = coordinator
        self.trained = TrainedSamples(trained_record, self.ranks)
        start = self._resume_records() if not fresh else 0
        if coordinator is not None and not fresh:
            self._resend_unsent(coordinator)
        sampler = ScheduleBatchSampler(
            self.plan,
            self.cfg.per_device_train_batch_size,
            start,
            rank=self.ranks.rank,
            world=self.ranks.world,
        )
        self.selection = callback = SelectionCallback(
            self.schedule,
            SharedUpdates(self.ranks, self.plan, coordinator),
            self.trainable_tensors,
            self.trained,
            self.stop,
        )
        args = self._training_args()
        self.ranks.one_gpu(args)
        self.trainer = ScheduledTrainer(
            model=self.model,
            args=args,
            train_dataset=EncodedDataset(self.encoded),
            eval_dataset=self._eval_dataset(),
            data_collator=PadCollator(pad_id(self.tokenizer)),
            processing_class=self.tokenizer,
            callbacks=[callback, self.stop],  # the stop after the update: see GracefulStop
            batch_sampler=sampler,
            trained=self.trained,
        )
        self._upcast()
        if coordinator is not None:  # the snapshot buffer made once, before training, once
            # Trainer has put the model on its device (pinned memory for a GPU's tensors)
            snapshot = coordinator.sender.snapshot
            snapshot.wire_dtypes = precision.wire_dtypes(self.model, self.upcast)  # as stored
            snapshot.reserve(self.trainable_tensors())

    def _on_update(self, row: dict[str, Any]) -> None:
        """Each update's selection figures go to the Trainer's log, and so to report_to
        (TensorBoard, W&B, MLflow), at the update's step; then to the caller's hook."""
        log_selection(self.trainer, row)
        if self.on_update is not None:
            self.on_update(row)

    def _resume_records(self) -> int:
        """Restore the draws made before the resumed step (every rank); drop the records from
        it on (rank 0)."""
        assert self.cfg.resume_from_checkpoint is not None
        state = Path(self.cfg.resume_from_checkpoint) / "trainer_state.json"
        start = int(json.loads(state.read_text())["global_step"])
        kept = None
        if self.ranks.is_main:
            kept = [r for r in read_jsonl(self.output_dir / SELECTIONS) if r["global_step"] < start]
            _rewrite(self.output_dir / SELECTIONS, kept)
            trained = read_jsonl(self.output_dir / TRAINED)
            _rewrite(self.output_dir / TRAINED, [r for r in trained if r["step"] < start])
        draws = self.ranks.share(
            [[r["global_step"], r["sampled_indices"]] for r in kept] if kept is not None else None
        )
        for step, indices in draws:
            self.plan.set_segment(self.schedule.segment_at(step), torch.tensor(indices))
        logger.info("resuming at step %d with %d earlier update(s)", start, len(draws))
        return start

    def _resend_unsent(self, coordinator: UpdateCoordinator) -> None:
        """A checkpoint the stopped run sent but the scorer did not acknowledge is sent again
        (the scorer answers one it has with `duplicate`)."""
        assert self.cfg.resume_from_checkpoint is not None
        upload = load_unsent(Path(self.cfg.resume_from_checkpoint))
        if upload is None:
            return
        if upload.run_id != self.run_id:
            logger.warning(
                "%s of run %s left unsent is not sent: this run is %s",
                upload.describe(),
                upload.run_id,
                self.run_id,
            )
            return
        coordinator.resend(upload)

    def _eval_dataset(self) -> EncodedDataset | None:
        if self.loaded.eval_samples is None:
            return None
        return EncodedDataset(
            encode_dataset(self.tokenizer, self.loaded.eval_samples, self.settings)
        )

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
        result = self._run_trainer()
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

    def _run_trainer(self) -> TrainOutput:
        """Trainer.train. A failed update (on_scorer_failure: fail) ends it with a
        ScorerFailure that names the checkpoint to resume from: the one saved at the failed
        update's step, or the one resumed from when no step was trained yet."""
        resumed = self.cfg.resume_from_checkpoint
        try:
            result = self.trainer.train(resume_from_checkpoint=resumed)
        except StopRequested:  # before the first step: the same checkpoint resumes
            raise
        except ScorerFailure as exc:  # an update before this run's first step: nothing to save
            if resumed is None:
                raise
            hint = _resume_hint(resumed)
            raise ScorerFailure(f"{exc}; nothing was trained after {hint}") from exc
        failure = self.stop.failure
        if failure is not None:  # the stop saved a checkpoint at the failed update's step
            raise ScorerFailure(
                f"{failure}; the state at step {self.trainer.state.global_step} is saved in "
                f"{_resume_hint(self.stop_checkpoint)}"
            ) from failure
        return result

    @property
    def stopped(self) -> bool:
        """Stopped by a signal before the last step (its checkpoint holds the state)."""
        return self.stop.requested and self.trainer.state.global_step < self.schedule.max_steps

    @property
    def stop_checkpoint(self) -> Path:
        return self.output_dir / f"checkpoint-{self.trainer.state.global_step}"

    # ---- save ----
    def save(self) -> None:
        if self.stopped:
            # Not the finished model: the checkpoint the stop saved is what a resume needs.
            logger.warning(
                "stopped at step %d of %d; state saved in %s: rerun with "
                "resume_from_checkpoint=%s to finish",
                self.trainer.state.global_step,
                self.schedule.max_steps,
                self.stop_checkpoint,
                self.stop_checkpoint,
            )
            return
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
        """Tell the scorer the run finished, or failed and why. A run stopped to be resumed
        (SIGTERM, Ctrl-C) has not ended: nothing is said."""
        if self.scorer is None or not getattr(self, "registered", False):
            return  # never registered (or not the main rank, which alone talks to the scorer)
        if isinstance(error, StopRequested | KeyboardInterrupt):
            return
        if error is None:
            if self.stopped:
                return
            self.scorer.end("finished", f"trained {self.trainer.state.global_step} steps")
        else:
            self.scorer.end("failed", f"{type(error).__name__}: {error}")

    # ---- cleanup ----
    def cleanup(self) -> None:
        try:
            if self.coordinator is not None:
                self.coordinator.close()  # a send in flight is cancelled first
            if self.scorer is not None:
                self.scorer.close()
        finally:
            self.ranks.close()


def run_stem(name: str) -> str:
    """The part of a run id taken from the output folder's name: ASCII letters, digits, `_`
    and `-` only (others become `-`), starting with a letter or digit; `run` if none is left."""
    kept = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "-" for c in name)
    return kept.lstrip("_-")[:80] or "run"


def model_spec(cfg: TrainConfig) -> ModelSpec:
    """The run's model; a local base model is named by its absolute path, so that a scorer
    started elsewhere finds the same folder."""
    lora = None
    if cfg.finetuning_type == "lora":
        lora = LoraSettings(cfg.lora_rank, cfg.alpha, cfg.lora_dropout, cfg.target_modules)
    return ModelSpec(
        resolve_base_model(cfg.model_name_or_path),
        cfg.finetuning_type,
        lora,
        cfg.trust_remote_code,
        ATTENTION[cfg.flash_attn],
        cfg.quantization_bit,
    )


def _resume_hint(checkpoint: str | Path) -> str:
    return (
        f"{checkpoint}: rerun with resume_from_checkpoint={checkpoint} to go on from there "
        "(the update that failed is sent again)"
    )


def _rewrite(path: Path, rows: list[dict]) -> None:
    record = JsonlRecord(path, truncate=True)
    for row in rows:
        record.append(row)


def run(loaded: LoadedConfig, *, handle_sigterm: bool = False, **hooks) -> DeltaLossRecipe:
    """handle_sigterm: SIGTERM saves a checkpoint at the end of the current step and stops
    (`recipe.stopped` then says so); the command line sets it."""
    recipe = DeltaLossRecipe(loaded, **hooks)
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
