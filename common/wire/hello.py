"""Building the hello that registers a run: what the scorer needs to score the samples the
trainer trains on, and the digests it checks its own view against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from common.data.datasets import DatasetSpec
from common.data.tokenization import EncodedSample, TokenizationSettings, fingerprint
from common.model_spec import ModelSpec
from common.wire.protocol import PROTOCOL_VERSION, Hello


def build_hello(
    *,
    run_id: str,
    spec: ModelSpec,
    dataset: DatasetSpec,
    val_size: float | None = None,
    split_seed: int | None = None,
    tokenization: TokenizationSettings,
    encoded: Sequence[EncodedSample],
    window_size: float,
    update_times: int,
    vocab_size: int | None = None,
    model_digest: str | None = None,
    run_token: str | None = None,
    token: str | None = None,
    selection_mode: Literal["sync", "async"] = "sync",
    score_budget: float = 1.0,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> Hello:
    """dataset names the files as the scorer reads them (common.data.datasets.absolute_spec);
    val_size and split_seed the validation split held out of them, if any; vocab_size is
    len(tokenizer); model_digest the checkpoint_digest of the trainer's model."""
    return Hello(
        protocol=PROTOCOL_VERSION,
        token=token,
        run_id=run_id,
        base_model=spec.base_model,
        finetuning_type=spec.kind,
        lora=spec.lora.to_spec() if spec.lora is not None else None,
        trust_remote_code=spec.trust_remote_code,
        attn_implementation=spec.attn_implementation,
        quantization_bit=spec.quantization_bit,
        dataset=dataset.names,
        dataset_dir=dataset.dataset_dir,
        max_samples=dataset.max_samples,
        val_size=val_size or None,
        split_seed=split_seed if val_size else None,
        tokenization=tokenization.to_dict(),
        window_size=window_size,
        update_times=update_times,
        n_samples=len(encoded),
        fingerprint=fingerprint(encoded),
        vocab_size=vocab_size,
        model_digest=model_digest,
        run_token=run_token,
        selection_mode=selection_mode,
        score_budget=score_budget,
        run_name=run_name,
        tags=tags or {},
    )
