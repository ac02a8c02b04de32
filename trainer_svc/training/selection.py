"""Delta Loss selection for a transformers Trainer, through the scorer: yours, or the one
`trainer-svc train` builds (trainer_svc.training.recipe).

    selection = DeltaLossSelection(
        {"dataset": "alpaca_en_demo", "dataset_dir": "data", "template": "llama3",
         "warmup_step": 10, "update_step": 10, "update_times": 5},
        model=model, tokenizer=tokenizer, args=args,
    )
    trainer = Trainer(model=model, args=args, train_dataset=selection.train_dataset,
                      data_collator=selection.data_collator)
    selection.attach(trainer)
    try:
        trainer.train()  # or trainer.train(resume_from_checkpoint=...): see below
        if not selection.stopped:
            trainer.save_model()
    finally:
        selection.close()

The selection keys are trainer-svc's config keys for the data, the schedule and the scorer;
batch size, epochs, steps, seed and output_dir come from your TrainingArguments, and the LoRA
settings (or full fine-tuning) from your model. `attach` makes the Trainer train each step on
the samples the schedule draws (its training dataloader is replaced) and adds the callbacks
that send each update's checkpoint and draw the next segment; selections.jsonl,
trained_samples.jsonl and run.json (the run's id and token at the scorer) are written to
args.output_dir as trainer-svc writes them.

trainer.train() registers the run with the scorer first (on a failure, on_scorer_failure
decides: stop, or train on uniform weights), then trains. A failed update under
on_scorer_failure: fail saves checkpoint-N at its step and is raised by trainer.train(), naming
the checkpoint to resume from. SIGTERM (handle_sigterm) finishes the current step, saves
checkpoint-N and ends training: trainer.train() returns with `selection.stopped` set.

Resuming: attach the selection to a new Trainer on the same output_dir and call
`trainer.train(resume_from_checkpoint="OUTPUT_DIR/checkpoint-N")` (or True, the last
checkpoint). The run keeps its id and token from run.json (the scorer takes it as the same
run), the draws made before step N are read back from selections.jsonl (the records from N on
are dropped and made again), a checkpoint the stopped run sent but the scorer did not
acknowledge is sent again, and training goes on from step N on the samples the uninterrupted
run would have trained.

close() reports the run's end to the scorer (finished, or failed and why; a run stopped to be
resumed has not ended) and closes the scorer link; a last checkpoint whose sending failed
under on_scorer_failure: fail is raised there, once the trained model could be saved.

FSDP (the Trainer's fsdp and fsdp_config; full fine-tuning under torchrun, FSDP2): each update's
checkpoint is the full state dict, gathered to rank 0 by every rank at the update's step
(trainer_svc.training.snapshot.gather_full), under the names and dtypes a DDP run sends.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import types
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

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
from trainer_svc.config.train_config import (
    ConfigError,
    LoadedConfig,
    TrainConfig,
    parse_config,
    resolve_base_model,
)
from trainer_svc.scorer.client import RemoteScorer, ScorerClient, scorer_failed
from trainer_svc.scorer.metrics_reporter import MetricsReporter
from trainer_svc.scorer.outage import Outage
from trainer_svc.scorer.retry import ScorerFailure, StopRequested
from trainer_svc.training import precision
from trainer_svc.training.dataset import INDEX_KEY, EncodedDataset, PadCollator
from trainer_svc.training.distributed import Ranks
from trainer_svc.training.records import (
    SELECTIONS,
    TRAINED,
    JsonlRecord,
    TrainedSamples,
    read_jsonl,
)
from trainer_svc.training.sampler import ScheduleBatchSampler, SelectionPlan
from trainer_svc.training.schedule import Segment
from trainer_svc.training.snapshot import gather_full, load_unsent, sharded
from trainer_svc.training.trainer import GracefulStop, SelectionCallback
from trainer_svc.training.updates import SharedUpdates, UpdateCoordinator, log_selection

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"

# The trainer-svc config keys a selection takes; the others come from TrainingArguments and
# the model.
SELECTION_KEYS = frozenset(
    {
        "dataset", "dataset_dir", "max_samples", "template", "cutoff_len", "trust_remote_code",
        "train_type", "components_cfg_file", "component_name", "warmup_step", "update_step",
        "update_times", "run_id", "run_name", "tags", "scorer_zmq_url", "scorer_http_url",
        "scorer_token", "scorer_ca_file", "scorer_curve_secret_key_file",
        "scorer_curve_server_key_file",
        "selection_mode", "score_budget", "scorer_wait_seconds", "on_scorer_failure",
    }
)  # fmt: skip


class DeltaLossSelection:
    """The schedule, the scorer link, the records, the identity and the stop of one run
    trained by a transformers Trainer."""

    def __init__(
        self,
        selection: dict[str, Any] | LoadedConfig,
        *,
        model: torch.nn.Module,
        tokenizer: Any,
        args: TrainingArguments,
        scorer: ScorerClient | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        handle_sigterm: bool = True,
        stop: GracefulStop | None = None,
    ):
        """selection: the selection keys (your model and TrainingArguments give the rest), or
        trainer-svc's whole loaded config, whose model and TrainingArguments these are.
        scorer replaces the ZeroMQ and REST scorer (tests use a FakeScorer,
        delta_loss_devtools.fake_scorer); on_update is called with each update's record row.
        handle_sigterm: while trainer.train() runs (main thread), SIGTERM saves a checkpoint at
        the end of the current step and stops training (a second one exits at once). stop: a
        GracefulStop already in place (trainer-svc's, handling SIGTERM from its start), whose
        ranks, and process group, are the caller's."""
        if isinstance(selection, LoadedConfig):
            self.loaded = selection
            self.spec = model_spec(selection.config)
        else:
            self.spec = spec_of(model, trust_remote_code=bool(selection.get("trust_remote_code")))
            if low := precision.low_precision_trainable(model):
                logger.warning(
                    "%s train without float32 master weights: at small learning rates most "
                    "updates round to nothing; upcast the trainable parameters (p.data = "
                    "p.data.float()) before the Trainer is made, unless pure bfloat16 is meant",
                    precision.describe(low),
                )
            self.loaded = selection_config(selection, args, self.spec)
        cfg = self.cfg = self.loaded.config
        self.model = model
        self.args = args
        self.scorer = scorer
        self.on_update = on_update
        self.handle_sigterm = handle_sigterm
        # the process group is the caller's when their TrainingArguments (or trainer-svc) made
        # it: left up then
        self._owns_group = not (dist.is_available() and dist.is_initialized())
        if stop is not None:
            self.ranks = stop.ranks
        else:
            self.ranks = Ranks.start(Launch.from_environment(), args.ddp_timeout or 1800)
        self.stop = stop or GracefulStop(self.ranks)
        self.ranks.one_gpu(args)  # before a Trainer would wrap the model in DataParallel
        self.output_dir = Path(str(cfg.output_dir))
        self.schedule = self.loaded.schedule()
        self.settings = TokenizationSettings(cfg.template, cfg.cutoff_len)
        self.encoded = encode_dataset(tokenizer, self.loaded.samples, self.settings)
        self._warn_empty_labels()
        self.train_dataset = EncodedDataset(self.encoded)
        self.data_collator = PadCollator(pad_id(tokenizer))
        self.plan = SelectionPlan(self.schedule, len(self.encoded), args.seed)
        self._vocab_size = len(tokenizer)  # the scorer compares its own tokenizer's length
        self._model_digest = checkpoint_digest(model, self.spec.kind)
        # A new run's identity, rank 0's; start() keeps run.json's instead when resuming.
        fresh = [cfg.run_id or _new_run_id(self.output_dir), secrets.token_hex(16)]
        self.run_id, self.run_token = self.ranks.share(fresh if self.ranks.is_main else None)
        # The dtype each trained tensor travels in, by name, when not its own (float32 master
        # weights as the model was stored); set it before training, else taken from the model.
        self.wire_dtypes: dict[str, torch.dtype] | None = None
        self.trained = TrainedSamples(None, self.ranks)  # rank 0's record, once started
        self.callback = _SelectionEvents()  # the updates, once started
        self.coordinator: UpdateCoordinator | None = None  # rank 0's, once started
        self.trainer: Trainer | None = None
        self.fsdp = False  # the attached Trainer shards the model with FSDP
        self.sampler: ScheduleBatchSampler | None = None
        self.outage: Outage | None = None
        self.registered = False  # the scorer registered the run (rank 0)
        self.refused = False  # the scorer refused the run (another run holds its id, ...)
        self._started: tuple[str | None] | None = None  # (the checkpoint resumed), once started
        self._ended = False

    @property
    def max_steps(self) -> int:
        return self.schedule.max_steps

    @property
    def hello(self) -> Hello:
        """What registers the run with the scorer."""
        cfg = self.cfg
        return build_hello(
            run_id=self.run_id,
            spec=self.spec,
            dataset=self.loaded.dataset,
            val_size=cfg.val_size,
            split_seed=cfg.seed,
            tokenization=self.settings,
            encoded=self.encoded,
            window_size=self.loaded.window_size,
            update_times=cfg.update_times,
            vocab_size=self._vocab_size,
            model_digest=self._model_digest,
            run_token=self.run_token,
            token=cfg.scorer_token,
            selection_mode=cfg.selection_mode,
            score_budget=cfg.score_budget,
            run_name=cfg.run_name,
            tags=cfg.tags,
        )

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint carries: LoRA's trainable tensors, or the full state dict. A model
        FSDP shards has its full state dict gathered to rank 0 (a collective: every rank calls
        it, and the others get nothing)."""
        if sharded(self.model):
            return gather_full(self.model)
        return checkpoint_tensors(self.model, self.spec.kind)

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

    # ---- attach ----
    def attach(self, trainer: Trainer) -> Trainer:
        """Make `trainer` train the scheduled samples and run the updates; returns it. Its
        train() registers the run (or resumes it: resume_from_checkpoint) before training."""
        if trainer.train_dataset is not self.train_dataset:
            raise ConfigError(
                {"train_dataset": "the Trainer must train selection.train_dataset: its sample "
                 "indices are the ones the scorer ranks"}
            )  # fmt: skip
        if self.trainer is not None:
            raise ValueError("this selection is attached to a Trainer already")
        self.trainer = trainer
        args = trainer.args
        self.ranks.one_gpu(args)  # before train() would wrap it in DataParallel
        self.fsdp = _fsdp(trainer, self.spec.kind)
        trainer._train_batch_size = args.train_batch_size  # as counted for one GPU
        if args.max_steps != self.schedule.max_steps:
            logger.info("max_steps set to the schedule's %d", self.schedule.max_steps)
            args.max_steps = self.schedule.max_steps
        args.ignore_data_skip = True  # the sampler starts at the resumed step itself
        self.sampler = sampler = ScheduleBatchSampler(
            self.plan, args.per_device_train_batch_size, rank=self.ranks.rank,
            world=self.ranks.world,
        )  # fmt: skip
        collate = _recording(trainer.data_collator, self.trained, lambda: trainer.state)

        def get_train_dataloader(_: Trainer) -> DataLoader:
            # A plain DataLoader in this process: nothing reads batches ahead of the step that
            # trains them (accelerate's wrapper would, and so would workers).
            return DataLoader(
                self.train_dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0,
                # Its own generator: starting the iterator draws a base seed, which would
                # otherwise come from the global RNG after Trainer restored it on resume, and
                # shift every later dropout mask against an uninterrupted run.
                generator=torch.Generator().manual_seed(trainer.args.seed),
            )  # fmt: skip

        trainer.get_train_dataloader = types.MethodType(get_train_dataloader, trainer)  # type: ignore[method-assign]
        train = trainer.train

        def train_selected(
            resume_from_checkpoint: str | bool | None = None, *more: Any, **kwargs: Any
        ) -> Any:
            return self._train(train, resume_from_checkpoint, *more, **kwargs)

        trainer.train = train_selected  # type: ignore[method-assign]
        trainer.add_callback(self.callback)
        trainer.add_callback(self.stop)  # after the updates: a failed update stops at its step
        return trainer

    # ---- start ----
    def start(self, resume_from_checkpoint: str | None = None) -> None:
        """Register the run (or the resumed run) with the scorer and open its records; the
        attached trainer.train() does it first, with its own resume_from_checkpoint, unless
        done. Rank 0 alone talks to the scorer and writes the records; every rank calls it."""
        if self.trainer is None:
            raise ValueError("attach the selection to its Trainer first")
        checkpoint = str(resume_from_checkpoint) if resume_from_checkpoint else None
        if self._started is not None:
            raise ValueError("this selection has started its run already")
        self._started = (checkpoint,)
        with self._handling():
            self._start(checkpoint)

    def _handling(self) -> Any:
        return self.stop.handling() if self.handle_sigterm else nullcontext()

    def _start(self, checkpoint: str | None) -> None:
        main = self.ranks.is_main
        fresh = checkpoint is None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        named = list(self._run_identity(checkpoint)) if main else None  # run.json: rank 0's
        self.run_id, self.run_token = self.ranks.share(named)
        self._connect_scorer_once()
        if main:
            self._record_identity()
        coordinator = None
        if main:  # the records and the scorer are rank 0's
            selections = JsonlRecord(self.output_dir / SELECTIONS, truncate=fresh)
            self.trained.record = JsonlRecord(self.output_dir / TRAINED, truncate=fresh)
            assert self.scorer is not None, "connected first"
            coordinator = UpdateCoordinator(
                run_id=self.run_id,
                kind=self.spec.kind,
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
        if checkpoint is not None:
            assert self.sampler is not None
            self.sampler.start_step = self._resume_records(checkpoint)
            if coordinator is not None:
                self._resend_unsent(coordinator, checkpoint)
        shared = GatheredUpdates if self.fsdp else SharedUpdates
        self.callback.updates = SelectionCallback(
            self.schedule,
            shared(self.ranks, self.plan, coordinator),
            self.trainable_tensors,
            self.trained,
            self.stop,
        )
        if main and self.registered and self.scorer is not None:
            self.callback.metrics = MetricsReporter(self.scorer.log_metrics)
        if coordinator is not None:  # the snapshot buffer made once, before training, once
            # the Trainer has put the model on its device (pinned memory for a GPU's tensors)
            snapshot = coordinator.sender.snapshot
            snapshot.wire_dtypes = self._wire_dtypes()
            snapshot.reserve(self.trainable_tensors())

    def _wire_dtypes(self) -> dict[str, torch.dtype]:
        if self.wire_dtypes is not None:
            return self.wire_dtypes
        if self.spec.kind == "full":  # float32 master weights of a model stored in bfloat16
            return precision.stored_dtypes(self.model)
        return {}

    def _run_identity(self, checkpoint: str | None) -> tuple[str, str]:
        """Configured, or kept from run.json when resuming, or new: dir name + time + random.
        The run's token (its identity at the scorer) is kept from run.json on a resume of the
        same run id, and new otherwise."""
        run_file = self.output_dir / RUN_FILE
        kept = {}
        if checkpoint is not None and run_file.is_file():
            kept = json.loads(run_file.read_text())
        run_id = self.cfg.run_id or kept.get("run_id") or self.run_id
        same_run = kept.get("run_id") == run_id and kept.get("run_token")
        run_token = kept["run_token"] if same_run else self.run_token
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
            self.scorer.register(self.hello)
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

    def _on_update(self, row: dict[str, Any]) -> None:
        """Each update's selection figures go to the Trainer's log, and so to report_to
        (TensorBoard, W&B, MLflow), at the update's step; then to the caller's hook."""
        log_selection(self.trainer, row)
        if self.on_update is not None:
            self.on_update(row)

    def _resume_records(self, checkpoint: str) -> int:
        """Restore the draws made before the resumed step (every rank); drop the records from
        it on (rank 0). Returns the step."""
        state = Path(checkpoint) / "trainer_state.json"
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

    def _resend_unsent(self, coordinator: UpdateCoordinator, checkpoint: str) -> None:
        """A checkpoint the stopped run sent but the scorer did not acknowledge is sent again
        (the scorer answers one it has with `duplicate`)."""
        upload = load_unsent(Path(checkpoint))
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

    # ---- train ----
    def _train(
        self, train: Callable[..., Any], resume: str | bool | None, *more: Any, **kwargs: Any
    ) -> Any:
        """The Trainer's train(), once the run is started. A failed update (on_scorer_failure:
        fail) ends it with a ScorerFailure that names the checkpoint to resume from: the one
        saved at the failed update's step, or the one resumed from when no step was trained
        yet. The scorer hears of a run that failed here at once."""
        checkpoint = self._checkpoint(resume)
        try:
            with self._handling():
                if self._started is None:
                    self.start(checkpoint)
                elif self._started != (checkpoint,):
                    raise ValueError(
                        f"the run was started to resume from {self._started[0]}, and trained "
                        f"with resume_from_checkpoint={checkpoint}"
                    )
                result = self._train_started(train, checkpoint, *more, **kwargs)
        except BaseException as error:
            self.report_end(error)
            raise
        if self.stopped:
            # Not the finished model: the checkpoint the stop saved is what a resume needs.
            logger.warning(
                "stopped at step %d of %d; state saved in %s: rerun with "
                "resume_from_checkpoint=%s to finish",
                self.global_step,
                self.schedule.max_steps,
                self.stop_checkpoint,
                self.stop_checkpoint,
            )
        return result

    def _checkpoint(self, resume: str | bool | None) -> str | None:
        """resume_from_checkpoint as Trainer reads it: True is output_dir's last checkpoint."""
        if resume is True:
            last = get_last_checkpoint(str(self.output_dir))
            if last is None:
                raise ValueError(f"no checkpoint found in {self.output_dir} to resume from")
            return last
        return str(resume) if resume else None

    def _train_started(
        self, train: Callable[..., Any], checkpoint: str | None, *more: Any, **kwargs: Any
    ) -> Any:
        try:
            result = train(checkpoint, *more, **kwargs)
        except StopRequested:  # before the first step: the same checkpoint resumes
            raise
        except ScorerFailure as exc:  # an update before this run's first step: nothing to save
            if checkpoint is None:
                raise
            hint = _resume_hint(checkpoint)
            raise ScorerFailure(f"{exc}; nothing was trained after {hint}") from exc
        failure = self.stop.failure
        if failure is not None:  # the stop saved a checkpoint at the failed update's step
            raise ScorerFailure(
                f"{failure}; the state at step {self.global_step} is saved in "
                f"{_resume_hint(self.stop_checkpoint)}"
            ) from failure
        return result

    @property
    def global_step(self) -> int:
        return self.trainer.state.global_step if self.trainer is not None else 0

    @property
    def stopped(self) -> bool:
        """Stopped by a signal before the last step (its checkpoint holds the state)."""
        return self.stop.requested and self.global_step < self.schedule.max_steps

    @property
    def stop_checkpoint(self) -> Path:
        """The checkpoint a stop saved."""
        return self.output_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.global_step}"

    @property
    def unsent_at_end(self) -> ScorerFailure | None:
        """The last checkpoint's sending failed once training finished (on_scorer_failure:
        fail): raised once the trained model is saved."""
        updates = self.callback.updates
        return updates.unsent_at_end if updates is not None else None

    # ---- end ----
    def report_end(self, error: BaseException | None) -> None:
        """Tell the scorer the run finished, or failed and why, once (rank 0, registered). A
        run stopped to be resumed (SIGTERM, Ctrl-C) has not ended: nothing is said."""
        if self._ended:
            return
        self._ended = True
        self._close_metrics()  # what was logged is stored before the run is said to end
        if self.scorer is None or not self.registered:
            return  # never registered (or not the main rank, which alone talks to the scorer)
        if isinstance(error, StopRequested | KeyboardInterrupt):
            return
        if error is None:
            if self.stopped:
                return
            self.scorer.end("finished", f"trained {self.global_step} steps")
        else:
            self.scorer.end("failed", f"{type(error).__name__}: {error}")

    def _close_metrics(self) -> None:
        """Send what is left of the logged metrics (bounded in time) and stop their thread."""
        if self.callback.metrics is not None:
            self.callback.metrics.close()
            self.callback.metrics = None

    def close(self) -> None:
        """Report the run's end (unless reported), then close the scorer link (a send in flight
        is cancelled first) and a process group the selection started. A last checkpoint whose
        sending failed (on_scorer_failure: fail) is raised here, once reported."""
        unsent = None if self._ended else self.unsent_at_end
        self._close_metrics()
        try:
            if unsent is not None:
                failure = ScorerFailure(f"{unsent}; training finished at step {self.global_step}")
                self.report_end(failure)
                raise failure from unsent
            self.report_end(None)
        finally:
            try:
                if self.coordinator is not None:
                    self.coordinator.close()
                if self.scorer is not None:
                    self.scorer.close()
            finally:
                if self._owns_group:
                    self.ranks.close()


class GatheredUpdates(SharedUpdates):
    """SharedUpdates for a model FSDP shards: every rank gathers the update's checkpoint first,
    at the update's step (a collective), then rank 0 sends what it gathered."""

    def run_update(
        self, segment: Segment, tensors: Callable[[], dict[str, torch.Tensor]]
    ) -> dict | None:
        started = time.monotonic()
        gathered = tensors()  # the full state dict on rank 0, nothing elsewhere
        if gathered:
            size = sum(t.numel() * t.element_size() for t in gathered.values())
            logger.info(
                "update %d at step %d: the full state dict gathered to rank 0 (%d tensors, "
                "%.1f MiB) in %.2fs", segment.update_index, segment.start, len(gathered),
                size / (1 << 20), time.monotonic() - started,
            )  # fmt: skip
        return super().run_update(segment, lambda: gathered)


def _fsdp(trainer: Trainer, kind: str) -> bool:
    """Whether the Trainer shards the model with FSDP (its TrainingArguments' fsdp); what the
    checkpoints could not be gathered from is refused. On CPU processes FSDP is set up here
    (fsdp_on_cpu)."""
    plugin_args = getattr(trainer.args, "fsdp_plugin_args", None)
    if not trainer.args.fsdp or plugin_args is None:
        return False
    problems = {}
    if kind != "full":
        problems["fsdp"] = (
            "FSDP is wired for full fine-tuning only: a LoRA checkpoint would need its adapters "
            "gathered apart from the frozen base; train LoRA with DDP (no fsdp)"
        )
    if plugin_args.get("fsdp_version") != 2:
        problems["fsdp_config"] = (
            "FSDP1 (version 1) is not supported: its checkpoints are not gathered here; use "
            "FSDP2 (version 2, transformers' default)"
        )
    if problems:
        raise ConfigError(problems)
    if not getattr(trainer, "is_fsdp_enabled", False):
        fsdp_on_cpu(trainer)
    return True


def fsdp_on_cpu(trainer: Trainer) -> None:
    """FSDP for a Trainer whose processes train on CPUs (gloo). accelerate takes the Trainer's
    FSDP plugin only for accelerator devices: on CPUs it drops it, and the model would train
    under DDP while the config asks for FSDP. torch's fully_shard runs on CPUs with gloo, so
    the Accelerator's state is set to FSDP with the plugin of the TrainingArguments, as
    accelerate sets it on GPUs (where this is not needed), in both of its shared states: every
    new AcceleratorState copies the process's PartialState over its own."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise ValueError(
            f"fsdp is set, but accelerate chose {state.distributed_type} without FSDP: launch "
            "under torchrun with more than one process"
        )
    plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    logger.info("FSDP on CPU processes (gloo): the Accelerator is set to shard the model")


class _SelectionEvents(TrainerCallback):
    """The Trainer's events for the run's updates (SelectionCallback), made when the run
    starts: once the run is registered and its records are open."""

    def __init__(self) -> None:
        self.updates: SelectionCallback | None = None
        self.metrics: MetricsReporter | None = None  # rank 0's, once the run is registered

    def on_train_begin(self, args, state, control, **kwargs):
        if self.updates is None:
            raise ValueError("the selection's run was not started: train with trainer.train()")
        return self.updates.on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.updates is not None:
            return self.updates.on_step_end(args, state, control, **kwargs)

    def on_save(self, args, state, control, **kwargs):
        if self.updates is not None:
            return self.updates.on_save(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.updates is not None:
            return self.updates.on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """What the Trainer logs (the loss, eval loss, learning rate, the selection's figures)
        goes to the scorer too, in the background."""
        if self.metrics is not None and logs:
            self.metrics.add(state.global_step, logs)


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
    """The dir name + time + random."""
    return f"{run_stem(output_dir.name)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


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


__all__ = ["DeltaLossSelection"]
