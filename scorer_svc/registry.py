"""What the scorer holds per run: the tokenized dataset, its batches and the scoring model."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from common.datasets import DatasetError, load_alpaca, resolve_dataset
from common.errors import RunMismatch
from common.protocol import Hello
from common.tokenization import (
    EncodedSample,
    TokenizationSettings,
    encode_dataset,
    fingerprint,
)
from scorer_svc.batching import Batch, make_batches
from scorer_svc.config import Settings
from scorer_svc.scoring import (
    Manifest,
    ScoringModel,
    build_model,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

# Fields of a hello that must not change between a run's registrations.
IDENTITY_FIELDS = (
    "base_model",
    "finetuning_type",
    "lora",
    "dataset",
    "tokenization",
    "window_size",
    "update_times",
    "n_samples",
    "fingerprint",
)


@dataclass
class RunData:
    encoded: list[EncodedSample]
    batches: list[Batch]

    @property
    def n_no_labels(self) -> int:
        return sum(1 for s in self.encoded if s.n_label_tokens == 0)


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


class Registry:
    """Run data by run id, and one scoring model at a time, shared by runs built alike.

    Sharing is safe because every checkpoint carries all the tensors it changes.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self._data: dict[str, RunData] = {}
        self._model_key: tuple | None = None
        self._model: ScoringModel | None = None
        self._manifests: dict[tuple, Manifest] = {}
        self._lock = threading.RLock()
        self._model_lock = threading.Lock()

    def prepare(self, hello: Hello) -> RunData:
        """Tokenize the dataset as the trainer did and refuse the run if anything differs."""
        key = json.dumps([hello.run_id, identity(hello)], sort_keys=True)
        with self._lock:
            if key in self._data:
                return self._data[key]
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(
                    hello.base_model, trust_remote_code=hello.trust_remote_code
                )
            except (OSError, ValueError) as exc:
                raise RunMismatch(
                    f"run {hello.run_id} refused: the scorer cannot load the tokenizer of "
                    f"{hello.base_model} ({exc}); the scorer must see the base model at the "
                    "path the trainer names"
                ) from exc
            settings = TokenizationSettings(**hello.tokenization)
            try:
                samples = load_alpaca(resolve_dataset(hello.dataset, hello.dataset_dir))
            except (DatasetError, OSError) as exc:
                raise RunMismatch(
                    f"run {hello.run_id} refused: the scorer cannot read the dataset: {exc}; "
                    "the scorer must see the dataset at the path the trainer names"
                ) from exc
            encoded = encode_dataset(tokenizer, samples, settings)
            self._check_agreement(hello, encoded, len(tokenizer))
            pad_id = tokenizer.pad_token_id
            if pad_id is None:
                pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
            batches = make_batches(
                encoded,
                batch_size=self.settings.batch_size,
                max_batch_tokens=self.settings.max_batch_tokens,
                pad_id=pad_id,
            )
            data = RunData(encoded, batches)
            self._data[key] = data
            return data

    @staticmethod
    def _check_agreement(hello: Hello, encoded: list[EncodedSample], vocab: int) -> None:
        problems = []
        if len(encoded) != hello.n_samples:
            problems.append(f"N: trainer has {hello.n_samples} samples, scorer {len(encoded)}")
        if hello.vocab_size is not None and hello.vocab_size != vocab:
            problems.append(f"tokenizer vocabulary: trainer {hello.vocab_size}, scorer {vocab}")
        ours = fingerprint(encoded)
        if ours != hello.fingerprint:
            problems.append(f"dataset fingerprint: trainer {hello.fingerprint}, scorer {ours}")
        if problems:
            raise RunMismatch(
                f"run {hello.run_id} refused, trainer and scorer disagree on "
                + "; ".join(problems)
                + f". Check that both read the same dataset ({hello.dataset}), the same "
                "tokenizer and the same template and cutoff_len."
            )

    @staticmethod
    def _key(hello: Hello) -> tuple:
        lora = hello.lora.model_dump() if hello.lora else None
        return (hello.base_model, hello.finetuning_type, repr(lora), hello.trust_remote_code)

    def manifest(self, hello: Hello) -> Manifest:
        """What a checkpoint of this run must hold, from a weightless (meta) model: the
        intake checks checkpoints without loading weights or waiting for the worker."""
        key = self._key(hello)
        with self._lock:
            if key not in self._manifests:
                self._manifests[key] = self._build_manifest(hello)
            manifest = self._manifests[key]
        if hello.model_digest is not None and hello.model_digest != manifest.digest:
            raise RunMismatch(
                f"run {hello.run_id} refused: the trainer's model ({hello.finetuning_type}) "
                f"has other tensor names or shapes than the scorer's {hello.base_model} with "
                f"the same settings (digest {hello.model_digest} vs {manifest.digest}): check "
                "that both use the same base model"
            )
        return manifest

    def _build_manifest(self, hello: Hello) -> Manifest:
        try:
            skeleton = build_model(
                hello.base_model,
                kind=hello.finetuning_type,
                lora=hello.lora.model_dump() if hello.lora else None,
                dtype=self.dtype,
                trust_remote_code=hello.trust_remote_code,
                weights=False,
            )
        except (OSError, ValueError) as exc:
            raise RunMismatch(
                f"run {hello.run_id} refused: the scorer cannot build {hello.base_model} "
                f"({hello.finetuning_type}): {exc}"
            ) from exc
        return Manifest.of(skeleton, hello.finetuning_type)

    def model(self, hello: Hello) -> ScoringModel:
        """The scoring model for this run's configuration, loaded once (used by the worker)."""
        key = self._key(hello)
        with self._model_lock:
            if self._model_key != key:
                self._model = None  # free the previous model before loading the next
                log.info(
                    "loading %s (%s) on %s", hello.base_model, hello.finetuning_type, self.device
                )
                self._model = ScoringModel.load(
                    hello.base_model,
                    kind=hello.finetuning_type,
                    lora=hello.lora.model_dump() if hello.lora else None,
                    device=self.device,
                    dtype=self.dtype,
                    trust_remote_code=hello.trust_remote_code,
                )
                self._model_key = key
            assert self._model is not None
            return self._model
