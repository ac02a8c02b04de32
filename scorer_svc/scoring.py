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
from common.errors import CheckpointRejected
from common.model_spec import ModelSpec, checkpoint_tensors
from common.protocol import shapes_digest
from common.tokenization import IGNORE_INDEX
from scorer_svc.batching import Batch

log = logging.getLogger(__name__)


class ScoringAborted(Exception):
    """Scoring stopped because the service is shutting down; the checkpoint stays pending."""


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


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (base) model's forward takes logits_to_keep (recent transformers models):
    then only the positions that predict labels get logits, not the prompt's."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


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
        self.manifest = Manifest.of(self.model, kind)
        self.keep_logits = accepts_logits_to_keep(self.model)
        self.targets = checkpoint_tensors(self.model, kind)

    @classmethod
    def load(cls, spec: ModelSpec, *, device: torch.device, dtype: torch.dtype) -> ScoringModel:
        autocast = uses_autocast(device, dtype)
        if spec.quantized:
            with torch.cuda.device(device):
                return cls(
                    spec.build(dtype=dtype), device, spec.kind, placed=True, autocast=autocast
                )
        return cls(spec.build(dtype=dtype), device, spec.kind, autocast=autocast)

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
        """Every sample's loss (float64, NaN where none); raises ScoringAborted on stop.
        on_batch(rows, tokens) is called after each batch with its samples and padded tokens."""
        losses = np.full(n_samples, np.nan)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext()
        n_rows = sum(len(b.indices) for b in batches)
        with tqdm(total=n_rows, desc=desc, unit="sample", leave=False) as bar, autocast:
            for batch in batches:
                if stop is not None and stop.is_set():
                    raise ScoringAborted(desc)
                labels = batch.labels.to(self.device)
                extra = {}
                if self.keep_logits:
                    start = first_label_position(batch.labels)
                    extra["logits_to_keep"] = labels.size(1) - start
                    labels = labels[:, start:]
                logits = self.model(
                    input_ids=batch.input_ids.to(self.device),
                    attention_mask=batch.attention_mask.to(self.device),
                    **extra,
                ).logits
                values = per_sample_losses(logits, labels)
                losses[batch.indices] = values.double().cpu().numpy()
                bar.update(len(batch.indices))
                if on_batch is not None:
                    on_batch(len(batch.indices), batch.input_ids.numel())
        release_freed_memory()
        return losses
