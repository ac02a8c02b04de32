"""Scoring models kept loaded by their spec, within a memory budget: runs on different base
models take turns at the worker without a reload at every checkpoint."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from common.model_spec import ModelSpec
from scorer_svc.scoring.model import ScoringModel

log = logging.getLogger(__name__)


CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def host_memory() -> int:
    """The memory this process may use: the host's, or its container's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total


GPU_SHARE = 0.6  # of the GPU memory free at start: the rest is for the scoring batches


def default_budget(device: torch.device) -> int:
    """GPU_SHARE of the memory free on the GPU when the scorer starts (what a trainer or
    another process already holds there is not counted; the rest is for the batches), or a
    quarter of the memory the process may use on the CPU (a container's limit counts)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_SHARE)
    return host_memory() // 4


def model_bytes(model: torch.nn.Module, itemsize: int | None = None) -> int:
    """The memory a model's parameters and buffers take (at itemsize bytes per value when
    given: a weightless skeleton's estimate)."""
    tensors = [*model.parameters(), *model.buffers()]
    if itemsize is None:
        return sum(t.numel() * t.element_size() for t in tensors)
    return sum(t.numel() for t in tensors) * itemsize


class ModelCache:
    """Models by spec, least recently used evicted first. Before a model is loaded, others are
    evicted until its estimated size fits beside those kept (a model larger than the budget on
    its own is still loaded, alone). Not thread-safe: the catalogue holds its lock around it."""

    def __init__(
        self,
        budget: int,
        load: Callable[[ModelSpec], ScoringModel],
        estimate: Callable[[ModelSpec], int],
    ) -> None:
        self.budget = budget
        self._load = load
        self._estimate = estimate
        self._models: OrderedDict[ModelSpec, tuple[ScoringModel, int]] = OrderedDict()
        self.loads = 0  # models loaded since start: a reload counts again

    @property
    def held_bytes(self) -> int:
        return sum(size for _, size in self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, spec: ModelSpec) -> ScoringModel:
        found = self._models.get(spec)
        if found is not None:
            self._models.move_to_end(spec)
            return found[0]
        needed = self._estimate(spec)
        while self._models and self.held_bytes + needed > self.budget:
            evicted, (_, size) = self._models.popitem(last=False)
            log.info("unloading %s (%s, %d MB) to make room", evicted.base_model,
                     evicted.kind, size >> 20)  # fmt: skip
        model = self._load(spec)  # the evicted models are freed before this one loads
        size = model_bytes(model.model)
        self._models[spec] = (model, size)
        self.loads += 1
        log.info(
            "loaded %s (%s, %d MB): %d model(s) held, %d of %d MB",
            spec.base_model, spec.kind, size >> 20, len(self._models), self.held_bytes >> 20,
            self.budget >> 20,
        )  # fmt: skip
        return model
