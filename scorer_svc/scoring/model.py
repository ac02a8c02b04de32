"""The scoring model: loaded once, checkpoints copied into it in place, every sample's loss."""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import dtypes
from common.data.tokenization import IGNORE_INDEX
from common.model_spec import ModelSpec, checkpoint_tensors
from common.wire.errors import CheckpointRejected
from common.wire.protocol import shapes_digest
from scorer_svc.scoring import memory
from scorer_svc.scoring.batches import Batch, split_batch

log = logging.getLogger(__name__)


class ScoringAborted(Exception):
    """Scoring stopped because the service is shutting down; the checkpoint stays pending."""


class ScoringOutOfMemory(RuntimeError):
    """Even one sample alone does not fit in the device's memory: the checkpoint fails."""


def per_sample_losses(
    logits: torch.Tensor, labels: torch.Tensor, *, max_chunk_elements: int = 1 << 25
) -> torch.Tensor:
    """Mean cross-entropy over each row's label tokens after the shift; NaN for a row with none.

    Matches `model(..., labels=row).loss` for each row taken alone. Only the label positions'
    logits are turned into float32, a chunk of rows at a time (at most max_chunk_elements
    logits per chunk), never the whole batch's.
    """
    shift_labels = labels[:, 1:]
    per_row = max(1, (logits.size(1) - 1) * logits.size(2))
    step = max(1, max_chunk_elements // per_row)
    out = []
    for first in range(0, logits.size(0), step):
        chunk_labels = shift_labels[first : first + step]
        mask = chunk_labels != IGNORE_INDEX
        token_loss = torch.zeros(chunk_labels.shape, dtype=torch.float32, device=logits.device)
        token_loss[mask] = F.cross_entropy(
            logits[first : first + step, :-1, :][mask].float(),
            chunk_labels[mask],
            reduction="none",
        )
        sums = token_loss.sum(dim=1)
        counts = mask.sum(dim=1)
        out.append(
            torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, torch.nan))
        )
    return torch.cat(out)


def first_label_position(labels: torch.Tensor) -> int:
    """The earliest position whose logits predict a label token, over the batch's rows."""
    has_label = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    if not bool(has_label.any()):
        return 0
    return int(has_label.nonzero()[0, 0])


def accepts(model: torch.nn.Module, keyword: str) -> bool:
    """Whether the (base) model's forward takes keyword: recent transformers models take
    logits_to_keep (then only the positions that predict labels get logits, not the
    prompt's) and use_cache; a model's own code (trust_remote_code) may take neither."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return accepts(model, "logits_to_keep")


def release_freed_memory() -> None:
    """Hand the memory a scoring pass freed back to the OS. glibc keeps freed blocks in its
    per-thread arenas, so without this the RSS wanders by several percent from checkpoint to
    checkpoint (how the batches' activations fragment them), which looks like a leak."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    is_float: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} was asked for, but CUDA is not available here")
    return torch.device(name)


@dataclass(frozen=True)
class Manifest:
    """Names and shapes a checkpoint of this model must carry, and those it may carry."""

    kind: str
    specs: dict[str, ParamSpec]
    required: frozenset[str]

    @classmethod
    def of(cls, model: torch.nn.Module, kind: str) -> Manifest:
        targets = checkpoint_tensors(model, kind)
        if kind == "lora":
            required = frozenset(targets)
        else:
            required = frozenset(n for n, _ in model.named_parameters())  # tied weights once
        specs = {n: ParamSpec(tuple(t.shape), t.is_floating_point()) for n, t in targets.items()}
        return cls(kind, specs, required)

    @property
    def digest(self) -> str:
        return shapes_digest((name, spec.shape) for name, spec in self.specs.items())

    def check(self, table: Sequence[tuple[str, str, list[int]]]) -> None:
        """Refuse a checkpoint whose names or shapes do not fit this model, naming them."""
        problems = []
        names = set()
        for name, dtype, shape in table:
            names.add(name)
            spec = self.specs.get(name)
            if spec is None:
                problems.append(f"unknown tensor {name}")
            elif tuple(shape) != spec.shape:
                problems.append(f"{name} has shape {list(shape)}, the model has {list(spec.shape)}")
            elif spec.is_float != dtypes.BY_NAME[dtype].is_float:
                problems.append(f"{name} has dtype {dtype}, which does not fit the model")
        missing = self.required - names
        if missing:
            problems.append(f"{len(missing)} tensors missing, e.g. {sorted(missing)[0]}")
        if problems:
            shown = "; ".join(problems[:5]) + (
                f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            )
            raise CheckpointRejected(
                f"checkpoint does not fit the {self.kind} model of this run: {shown}"
            )


def _warn_non_finite(losses: np.ndarray, scored: list[int], desc: str) -> None:
    """A sample with label tokens whose loss is not finite has no weight; say how many, since
    many point at the scoring dtype (float16 overflowing on a model trained in bfloat16)."""
    bad = int((~np.isfinite(losses[scored])).sum())
    if bad:
        log.warning(
            "%s: %d of %d samples have a non-finite loss (no weight); if the scorer computes "
            "in float16 (`auto` before Ampere), dtype: float32 avoids an overflow",
            desc, bad, len(scored),
        )  # fmt: skip


def current_device(device: torch.device) -> contextlib.AbstractContextManager:
    """device made the calling thread's current CUDA device while inside (a thread starts on
    GPU 0 whatever the scorer's --device); nothing on other devices."""
    if device.type != "cuda":
        return nullcontext()
    return torch.cuda.device(device)


def uses_autocast(device: torch.device, dtype: torch.dtype) -> bool:
    """bfloat16 autocast on CUDA for a bfloat16 model (`auto` there) only: a float32 run is
    scored in float32, as the published method scores it, and a float16 one as loaded."""
    return device.type == "cuda" and dtype == torch.bfloat16


class ScoringModel:
    """One model on one device; a checkpoint is copied into its tensors in place."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        kind: str,
        *,
        placed: bool = False,
        autocast: bool = False,
    ) -> None:
        """placed: the model is on its device already (a quantized base loads there);
        autocast: compute under bfloat16 autocast on CUDA (a bfloat16 model, `auto` there)."""
        self.model = (model if placed else model.to(device)).eval()
        self.device = device
        self.autocast = autocast and device.type == "cuda"
        self.kind = kind
        self.manifest = Manifest.of(self.model, kind)  # LoRA's: the trainable tensors
        self.keep_logits = accepts_logits_to_keep(self.model)
        # no KV cache: nothing reads it, and it would hold every layer's keys and values
        self.no_cache = {"use_cache": False} if accepts(self.model, "use_cache") else {}
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = False  # for a model's own code that reads it there
        self.targets = checkpoint_tensors(self.model, kind)
        self.model.requires_grad_(False)  # nothing is trained here: no autograd bookkeeping
        self.token_cost = (
            None if config is None else memory.TokenCost.of(config, self._logits_dtype())
        )
        # The padded tokens a batch may hold after an out-of-memory error: the batch that
        # worked, kept for this model's next batches and checkpoints. None: not limited.
        self.token_limit: int | None = None
        self.free_memory: Callable[[], int | None] = lambda: memory.free_bytes(device)

    def _logits_dtype(self) -> torch.dtype:
        if self.autocast:
            return torch.bfloat16
        floats = [p.dtype for p in self.model.parameters() if p.is_floating_point()]
        return floats[0] if floats else torch.float32

    def batch_tokens(self) -> int | None:
        """The padded tokens a batch may hold now: what fits the device's free memory at
        this model's cost per token, and the limit an out-of-memory error left (None: no
        limit but the batches' own, max_batch_tokens)."""
        limits = [] if self.token_limit is None else [self.token_limit]
        free = self.free_memory()
        if free is not None and self.token_cost is not None:
            limits.append(self.token_cost.tokens_within(free))
        return min(limits) if limits else None

    @classmethod
    def load(cls, spec: ModelSpec, *, device: torch.device, dtype: torch.dtype) -> ScoringModel:
        """The run's model from its folder on disk: the scorer never asks a hub for one."""
        autocast = uses_autocast(device, dtype)
        if spec.quantized:
            with torch.cuda.device(device):
                model = spec.build(dtype=dtype, local_files_only=True)
                return cls(model, device, spec.kind, placed=True, autocast=autocast)
        return cls(
            spec.build(dtype=dtype, local_files_only=True), device, spec.kind, autocast=autocast
        )

    @torch.no_grad()
    def apply(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            self.targets[name].copy_(tensor)

    @torch.no_grad()
    def score(
        self,
        batches: Sequence[Batch],
        n_samples: int,
        *,
        stop: threading.Event | None = None,
        desc: str = "scoring",
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Every sample's loss (float64, NaN where none); raises ScoringAborted on stop,
        ScoringOutOfMemory when one sample alone does not fit. A batch larger than the
        memory free allows (batch_tokens) is scored in parts; an out-of-memory error halves
        the part and tries again. on_batch(rows, tokens) is called after each batch with its
        samples and padded tokens."""
        with current_device(self.device):  # the scoring thread's CUDA calls go to this GPU
            return self._score(batches, n_samples, stop, desc, on_batch)

    def _score(
        self,
        batches: Sequence[Batch],
        n_samples: int,
        stop: threading.Event | None,
        desc: str,
        on_batch: Callable[[int, int], None] | None,
    ) -> np.ndarray:
        losses = np.full(n_samples, np.nan)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext()
        n_rows = sum(len(b.indices) for b in batches)
        indices: list[int] = []
        values: list[torch.Tensor] = []  # kept on the device: one copy to the host at the end
        limit = self.batch_tokens()
        try:
            with tqdm(total=n_rows, desc=desc, unit="sample", leave=False) as bar, autocast:
                for batch in batches:
                    if stop is not None and stop.is_set():
                        raise ScoringAborted(desc)
                    for part, part_losses in self._fitting(batch, limit):
                        indices.extend(part.indices)
                        values.append(part_losses)
                    if self.token_limit is not None:  # an out-of-memory error lowered it
                        limit = min(limit or self.token_limit, self.token_limit)
                    bar.update(len(batch.indices))
                    if on_batch is not None:
                        on_batch(len(batch.indices), batch.input_ids.numel())
            if values:
                losses[indices] = torch.cat(values).double().cpu().numpy()
                _warn_non_finite(losses, indices, desc)
        finally:
            values.clear()
            release_freed_memory()
            memory.release_device_cache(self.device)
        return losses

    def _fitting(self, batch: Batch, limit: int | None) -> list[tuple[Batch, torch.Tensor]]:
        """The batch's per-row losses, in parts of at most limit padded tokens; a part that
        runs out of memory is halved (its rows) and tried again, down to one sample."""
        pending = split_batch(batch, limit) if limit is not None else [batch]
        done = []
        while pending:
            part = pending.pop(0)
            failed = False
            try:
                done.append((part, self._losses(part)))
            except torch.OutOfMemoryError:
                failed = True  # handled below, once the error's frames (and tensors) are gone
            if not failed:
                continue
            memory.release_device_cache(self.device)
            rows, width = len(part.indices), part.input_ids.size(1)
            if rows == 1:
                raise ScoringOutOfMemory(
                    f"out of memory scoring one sample of {width} tokens "
                    f"{memory.describe(self.device)}; lower cutoff_len, give the scorer a GPU "
                    "to itself (the trainer may share this one), or use a GPU with more memory"
                )
            half = (rows + 1) // 2
            self.token_limit = half * width
            log.warning(
                "out of memory scoring %d samples x %d tokens %s: batches now hold at most "
                "%d tokens", rows, width, memory.describe(self.device), self.token_limit,
            )  # fmt: skip
            pending[:0] = split_batch(part, self.token_limit)
        return done

    def _losses(self, batch: Batch) -> torch.Tensor:
        labels = batch.labels.to(self.device)
        extra = {}
        if self.keep_logits:
            start = first_label_position(batch.labels)
            extra["logits_to_keep"] = labels.size(1) - start
            labels = labels[:, start:]
        logits = self.model(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
            **self.no_cache,
            **extra,
        ).logits
        return per_sample_losses(logits, labels)
