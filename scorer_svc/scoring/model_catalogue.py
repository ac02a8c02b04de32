"""The scoring models a scorer builds, by ModelSpec: runs built alike share one. Before a run
is registered, whether its model can be built here as the trainer does (check_loadable) and
what its checkpoints must hold (manifest, from a weightless model)."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import torch
from cachetools import LRUCache

from common.dtypes import compute_dtype
from common.model_spec import ModelSpec
from common.wire.errors import RunMismatch
from common.wire.protocol import Hello
from scorer_svc.config import Settings
from scorer_svc.scoring.model import Manifest, ScoringModel, resolve_device
from scorer_svc.scoring.model_cache import ModelCache, default_budget, model_bytes
from scorer_svc.scoring.single_flight import SingleFlight
from scorer_svc.security.policy import AccessPolicy

log = logging.getLogger(__name__)

MAX_MANIFESTS = 64  # model specs whose tensor names and shapes are kept


class ModelCatalogue:
    """Scoring models by spec (ModelCache), shared by runs built alike, within
    settings.model_cache_bytes. Sharing is safe because every checkpoint carries all the
    tensors it changes. Models are read only from the folders `access` allows.
    """

    def __init__(self, settings: Settings, access: AccessPolicy) -> None:
        self.access = access
        self.device = resolve_device(settings.device)
        self.dtype = compute_dtype(settings.dtype, self.device)
        budget = settings.model_cache_bytes or default_budget(self.device)
        self.cache = ModelCache(budget, self._load_model, self._estimate_bytes)
        self._manifests: LRUCache[ModelSpec, Manifest] = LRUCache(MAX_MANIFESTS)
        self._lock = threading.RLock()  # the manifests only; never held while computing
        self._building = SingleFlight()  # held while a spec's manifest is computed
        self._model_lock = threading.Lock()

    def _spec(self, hello: Hello) -> ModelSpec:
        """The run's model as this scorer builds it: the model's own code runs only when the
        scorer allows it, whatever a run registered before asked for."""
        return replace(ModelSpec.from_hello(hello), trust_remote_code=self.access.trusts(hello))

    def check_loadable(self, hello: Hello) -> None:
        """Refuse a run whose model this scorer cannot build as the trainer does: no folder
        on its disk (the scorer never asks a hub), or quantization or attention that needs a
        GPU or a package this scorer lacks."""
        self.access.check_model_folder(hello)
        problem = self._spec(hello).load_problem(cuda=self.device.type == "cuda")
        if problem is not None:
            raise RunMismatch(
                f"run {hello.run_id} refused: {problem}; the scorer builds the base model as "
                "the trainer does, so that both compute the same losses"
            )

    def manifest(self, hello: Hello) -> Manifest:
        """What a checkpoint of this run must hold, from a weightless (meta) model: the
        intake checks checkpoints without loading weights or waiting for the worker."""
        spec = self._spec(hello)
        with self._building(spec):
            with self._lock:
                manifest = self._manifests.get(spec)
            if manifest is None:
                manifest = self._build_manifest(spec, hello)
                with self._lock:
                    self._manifests[spec] = manifest
        if hello.model_digest is not None and hello.model_digest != manifest.digest:
            raise RunMismatch(
                f"run {hello.run_id} refused: the trainer's model ({spec.kind}) has other "
                f"tensor names or shapes than the scorer's {spec.base_model} with the same "
                f"settings (digest {hello.model_digest} vs {manifest.digest}): check that "
                "both use the same base model"
            )
        return manifest

    def _build_manifest(self, spec: ModelSpec, hello: Hello) -> Manifest:
        self.access.check_model_folder(hello)
        try:
            skeleton = spec.skeleton(local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RunMismatch(
                f"run {hello.run_id} refused: the scorer cannot build {spec.base_model} "
                f"({spec.kind}): {exc}{self.access.untrusted_hint(hello)}"
            ) from exc
        return Manifest.of(skeleton, spec.kind)

    def model(self, hello: Hello) -> ScoringModel:
        """The scoring model for this run's configuration, kept loaded with others within
        settings.model_cache_bytes (used by the worker)."""
        spec = self._spec(hello)
        self.access.check_model_folder(hello)
        with self._model_lock:
            return self.cache.get(spec)

    def _load_model(self, spec: ModelSpec) -> ScoringModel:
        log.info("loading %s (%s) on %s", spec.base_model, spec.kind, self.device)
        return ScoringModel.load(spec, device=self.device, dtype=self.dtype)

    def _estimate_bytes(self, spec: ModelSpec) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return model_bytes(spec.skeleton(local_files_only=True), itemsize)
