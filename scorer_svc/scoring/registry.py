"""What the scorer holds per run: the tokenized dataset, its batches and the scoring model."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import torch
from cachetools import LRUCache

from common.data.datasets import DatasetError
from common.data.tokenization import EncodedSample
from common.dtypes import compute_dtype
from common.model_spec import ModelSpec, pad_id
from common.wire.errors import RunMismatch
from common.wire.protocol import Hello
from scorer_svc.config import Settings
from scorer_svc.scoring.batches import Batch, make_batches, subset_batches
from scorer_svc.scoring.model import Manifest, ScoringModel, resolve_device
from scorer_svc.scoring.model_cache import ModelCache, default_budget, model_bytes
from scorer_svc.scoring.run_dataset import DatasetReader
from scorer_svc.scoring.single_flight import SingleFlight

log = logging.getLogger(__name__)

# Fields of a hello that must not change between a run's registrations.
IDENTITY_FIELDS = (
    "base_model",
    "finetuning_type",
    "lora",
    "attn_implementation",
    "quantization_bit",
    "dataset",
    "max_samples",
    "val_size",
    "split_seed",
    "tokenization",
    "window_size",
    "update_times",
    "n_samples",
    "fingerprint",
)


@dataclass(frozen=True)
class RunData:
    """A run's samples as the worker scores them: padded batches, and what registration tells."""

    batches: list[Batch]
    n_no_labels: int  # samples without a label token (no loss, not ranked)
    pad_id: int = 0  # what pads a row of its batches

    def only(self, samples: Collection[int], settings: Settings) -> list[Batch]:
        """The batches of the named samples alone (a scoring budget's checkpoint)."""
        return subset_batches(
            self.batches,
            samples,
            batch_size=settings.batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            pad_id=self.pad_id,
        )

    @property
    def nbytes(self) -> int:
        return sum(
            t.nbytes for b in self.batches for t in (b.input_ids, b.attention_mask, b.labels)
        )


def identity(hello: Hello) -> dict:
    dumped = hello.model_dump()
    return {key: dumped[key] for key in IDENTITY_FIELDS}


def differences(stored: dict, hello: Hello) -> list[str]:
    new = identity(hello)
    return [
        f"{key}: registered {stored.get(key)!r}, now {new[key]!r}"
        for key in IDENTITY_FIELDS
        if stored.get(key) != new[key]
    ]


MAX_MANIFESTS = 64  # model specs whose tensor names and shapes are kept
MAX_HELLOS = 4096  # parsed hellos of registered runs


class Registry:
    """Run data by run, and scoring models by spec (ModelCache), shared by runs built alike.

    Sharing is safe because every checkpoint carries all the tensors it changes. Run data
    stays within settings.max_run_data_bytes: the least recently used runs' are dropped and
    tokenized again (and checked again against the trainer's fingerprint) when next needed.
    A run's dataset is read through `datasets`, which the API's sample texts read it with too.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = compute_dtype(settings.dtype, self.device)
        self.datasets = DatasetReader.of(settings)
        self.access = self.datasets.access
        self._data: LRUCache[str, RunData] = LRUCache(
            settings.max_run_data_bytes, getsizeof=lambda data: data.nbytes
        )
        self._hellos: LRUCache[str, tuple[dict[str, Any], Hello]] = LRUCache(MAX_HELLOS)
        budget = settings.model_cache_bytes or default_budget(self.device)
        self.models = ModelCache(budget, self._load_model, self._estimate_bytes)
        self._manifests: LRUCache[ModelSpec, Manifest] = LRUCache(MAX_MANIFESTS)
        self._lock = threading.RLock()  # the caches only; never held while computing
        self._building = SingleFlight()  # held while a key is computed
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

    def hello_of(self, run_id: str, config: dict[str, Any]) -> Hello:
        """The stored hello of a registered run, parsed once (a run's hello never changes, but
        a run deleted and registered again under its id may have another)."""
        with self._lock:
            cached = self._hellos.get(run_id)
            if cached is None or cached[0] != config:
                cached = self._hellos[run_id] = (config, Hello.model_validate(config))
            return cached[1]

    def prepare(self, hello: Hello) -> RunData:
        """Tokenize the dataset as the trainer did and refuse the run if anything differs.
        The work runs outside the registry's lock: one run being tokenized holds up no other."""
        key = json.dumps([hello.run_id, identity(hello)], sort_keys=True)
        with self._building(key):
            with self._lock:
                data = self._data.get(key)
            if data is not None:
                return data
            data = self._tokenize(hello)
            with self._lock:
                if data.nbytes <= self._data.maxsize:
                    self._data[key] = data  # the least recently used runs' go
                    return data
            log.warning(
                "run %s: its batches (%d MB) exceed max_run_data_bytes on their own; they are "
                "tokenized again whenever needed: raise max_run_data_bytes",
                hello.run_id,
                data.nbytes >> 20,
            )
            return data

    @property
    def run_data_bytes(self) -> int:
        """The memory the cached run data holds."""
        with self._lock:
            return int(self._data.currsize)

    def _tokenize(self, hello: Hello) -> RunData:
        self.access.check_model_folder(hello)  # never a hub's repository of that name
        try:
            tokenizer = self.datasets.tokenizer(hello)
        except (OSError, ValueError) as exc:
            raise RunMismatch(
                f"run {hello.run_id} refused: the scorer cannot load the tokenizer of "
                f"{hello.base_model} ({exc}){self.access.untrusted_hint(hello)}; the scorer "
                "must see the base model at the path the trainer names"
            ) from exc
        try:
            # the trainer's training part only, every path checked against the roots first
            samples = [row.sample for row in self.datasets.training_rows(hello)]
        except (DatasetError, OSError) as exc:
            raise RunMismatch(
                f"run {hello.run_id} refused: the scorer cannot read the dataset: {exc}; "
                "the scorer must see the dataset at the path the trainer names"
            ) from exc
        if len(samples) != hello.n_samples:  # before any sample is tokenized
            raise RunMismatch(
                f"run {hello.run_id} refused: the trainer has {hello.n_samples} samples, the "
                f"scorer reads {len(samples)} from {hello.dataset}; check that both read the "
                "same dataset, max_samples and val_size"
            )
        encoded = self.datasets.encode(hello, tokenizer, samples)
        self._check_agreement(hello, encoded, len(tokenizer))
        padding = pad_id(tokenizer)
        batches = make_batches(
            encoded,
            batch_size=self.settings.batch_size,
            max_batch_tokens=self.settings.max_batch_tokens,
            pad_id=padding,
        )
        return RunData(batches, sum(1 for e in encoded if e.n_label_tokens == 0), padding)

    @staticmethod
    def _check_agreement(hello: Hello, encoded: list[EncodedSample], vocab: int) -> None:
        problems = []
        if hello.vocab_size is not None and hello.vocab_size != vocab:
            problems.append(f"tokenizer vocabulary: trainer {hello.vocab_size}, scorer {vocab}")
        ours = DatasetReader.fingerprint(encoded)
        if ours != hello.fingerprint:
            problems.append(f"dataset fingerprint: trainer {hello.fingerprint}, scorer {ours}")
        if problems:
            raise RunMismatch(
                f"run {hello.run_id} refused, trainer and scorer disagree on "
                + "; ".join(problems)
                + f". Check that both read the same dataset ({hello.dataset}), the same "
                "tokenizer and the same template and cutoff_len."
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
            return self.models.get(spec)

    def _load_model(self, spec: ModelSpec) -> ScoringModel:
        log.info("loading %s (%s) on %s", spec.base_model, spec.kind, self.device)
        return ScoringModel.load(spec, device=self.device, dtype=self.dtype)

    def _estimate_bytes(self, spec: ModelSpec) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return model_bytes(spec.skeleton(local_files_only=True), itemsize)
