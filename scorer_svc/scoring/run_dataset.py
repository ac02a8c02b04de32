"""A run's dataset as the scorer reads it again: every path checked against the scorer's roots
before it is looked at, tokenized with the run's own tokenizer and settings, so that its
fingerprint can be compared with the trainer's. The worker's tokenization (RunDataStore) and the
API's sample texts (scorer_svc.api.run_texts) read it through the same DatasetReader."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.data.datasets import DatasetSpec, Row, training_rows
from common.data.samples import Sample
from common.data.tokenization import (
    EncodedSample,
    TokenizationSettings,
    encode_dataset,
    fingerprint,
)
from common.wire.protocol import Hello
from scorer_svc.config import Settings
from scorer_svc.security.policy import AccessPolicy


def access_policy(settings: Settings) -> AccessPolicy:
    """What this scorer's settings let a run's hello make it read and run."""
    return AccessPolicy.of(
        model_roots=settings.model_root,
        data_roots=settings.data_root,
        data_dir=settings.data_dir,
        trust_remote_code=settings.trust_remote_code,
    )


@dataclass(frozen=True)
class DatasetReader:
    """Reads a run's training rows and tokenizes them as its trainer did, within `access`."""

    access: AccessPolicy

    @classmethod
    def of(cls, settings: Settings) -> DatasetReader:
        return cls(access_policy(settings))

    def training_rows(self, hello: Hello) -> list[Row]:
        """The rows the run trains on, by sample index (its validation rows left out), each
        path checked against the scorer's roots before it is looked at. Raises Forbidden for a
        path outside them, DatasetError or OSError when the dataset cannot be read."""
        spec = DatasetSpec(hello.dataset, hello.dataset_dir, hello.max_samples)
        return training_rows(
            spec,
            hello.val_size,
            hello.split_seed,
            lambda path: self.access.check_dataset_file(hello, path),
        )

    def tokenizer(self, hello: Hello) -> Any:
        """The run's tokenizer, from local files only; the model's own code runs only when
        the scorer allows it. Raises OSError or ValueError when it cannot be loaded."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            hello.base_model, trust_remote_code=self.access.trusts(hello), local_files_only=True
        )

    @staticmethod
    def encode(hello: Hello, tokenizer: Any, samples: Iterable[Sample]) -> list[EncodedSample]:
        """The samples tokenized with the run's settings, as its trainer tokenized them."""
        return encode_dataset(
            tokenizer, samples, TokenizationSettings(**hello.tokenization.model_dump())
        )

    @staticmethod
    def fingerprint(encoded: Iterable[EncodedSample]) -> str:
        """What the trainer's hello carries as `fingerprint` for these encoded samples."""
        return fingerprint(encoded)
