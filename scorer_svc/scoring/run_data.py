"""What the scorer holds of a run's data: its dataset tokenized as the trainer did (and
checked against the trainer's fingerprint), in padded batches, cached within
settings.max_run_data_bytes."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from common.data.datasets import DatasetError
from common.data.tokenization import EncodedSample
from common.model_spec import pad_id
from common.wire.errors import RunMismatch
from common.wire.protocol import Hello
from scorer_svc.config import Settings
from scorer_svc.scoring.batches import Batch, make_batches, subset_batches
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


MAX_HELLOS = 4096  # parsed hellos of registered runs


class RunDataStore:
    """Run data by run, within settings.max_run_data_bytes: the least recently used runs' are
    dropped and tokenized again (and checked again against the trainer's fingerprint) when
    next needed. A run's dataset is read through `datasets`, which the API's sample texts read
    it with too.
    """

    def __init__(self, settings: Settings, datasets: DatasetReader) -> None:
        self.settings = settings
        self.datasets = datasets
        self.access = datasets.access
        self._data: LRUCache[str, RunData] = LRUCache(
            settings.max_run_data_bytes, getsizeof=lambda data: data.nbytes
        )
        self._hellos: LRUCache[str, tuple[dict[str, Any], Hello]] = LRUCache(MAX_HELLOS)
        self._lock = threading.RLock()  # the caches only; never held while computing
        self._building = SingleFlight()  # held while a run's data is computed

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
        The work runs outside the store's lock: one run being tokenized holds up no other."""
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
