"""Scoring throughput, model-FLOP utilisation and peak memory on a GPU (skipped without CUDA).

A randomly initialised Llama of a real 1B-class shape (Llama 3.2 1B's: nothing downloaded)
in bfloat16 scores random samples of 128 to 512 tokens, half prompt, half labels, three ways
over the same tokens: the scorer's batched path (`ScoringModel.score`, length-grouped
batches, bfloat16 autocast as the scorer uses it), a batch of one sample at a time, and a
bare forward pass of the same batches with the same `logits_to_keep` (no loss: the ceiling).
Each path is timed twice after a warm-up (the bare forward's is the batched path's), the
faster run counting. The peak GPU memory (`torch.cuda.max_memory_allocated`, weights
included) is taken over the same longest batches scored in float32 and in bfloat16.

MFU: the forward's FLOPs over the seconds and the GPU's dense peak (`PEAKS`; no MFU for a
GPU not in it). The FLOPs of samples of n_i tokens (`forward_flops`):

    2 x P x sum(n_i)                              the layers' matrix products, P: the
                                                  parameters but the embedding and LM head
  + 4 x layers x hidden x sum(n_i (n_i + 1) / 2)  attention's scores and weighted sum
                                                  (causal: position j sees j + 1 positions)
  + 2 x hidden x vocab x K                        the LM head, over K positions

K counts the positions whose logits are computed (`logit_positions`). The scorer passes
`logits_to_keep`, so a batch gets logits for each of its rows from the batch's first label
position (its shortest prompt's last token) to its padded end: K counts those, padding
included, as the GPU computes them; the other two terms count real tokens only. On the
benchmark's samples K is 52% of the tokens (3% more than each sample's own label positions)
and the LM head 12% of the FLOPs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from common.data.tokenization import IGNORE_INDEX, EncodedSample
from scorer_svc.scoring.batches import Batch, make_batches
from scorer_svc.scoring.model import (
    ScoringModel,
    ScoringOutOfMemory,
    first_label_position,
    uses_autocast,
)

# Dense (not sparse) tensor-core peak FLOP/s by the name torch.cuda.get_device_name() gives:
# (a name, matched as whole words, case aside; peak; its precision). The first match wins,
# so a variant comes before its family ("H100 PCIe" before "H100"); whole words keep "L4",
# "L40" and "L40S" apart. The V100 and T4 have no bfloat16 tensor cores: their float16 peak.
PEAKS: tuple[tuple[str, float, str], ...] = (
    ("H200 NVL", 835e12, "bf16"),
    ("H200", 989e12, "bf16"),
    ("H100 PCIe", 756e12, "bf16"),
    ("H100 NVL", 835e12, "bf16"),
    ("H100", 989e12, "bf16"),  # SXM: "NVIDIA H100 80GB HBM3"
    ("A100", 312e12, "bf16"),
    ("L40S", 362e12, "bf16"),
    ("L40", 181e12, "bf16"),
    ("L4", 121e12, "bf16"),
    ("A10G", 125e12, "bf16"),
    ("A10", 125e12, "bf16"),
    ("RTX A6000", 155e12, "bf16"),
    ("RTX 4090", 165e12, "bf16"),
    ("V100", 125e12, "fp16"),
    ("T4", 65e12, "fp16"),
)
SHAPE: dict[str, Any] = dict(  # Llama 3.2 1B
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
SAMPLES = 4096
ONE_BY_ONE = 256  # samples scored a batch of one at a time (the slow way)
MEMORY_BATCHES = 4  # the longest batches, scored in float32 and in bfloat16 for the peak


def peak(name: str) -> tuple[float, str] | None:
    """The GPU's dense peak FLOP/s and its precision ("bf16", or "fp16" where the GPU has no
    bfloat16 tensor cores); None for a GPU not in PEAKS."""
    for pattern, flops, precision in PEAKS:
        if re.search(rf"\b{re.escape(pattern)}\b", name, re.IGNORECASE):
            return flops, precision
    return None


def non_embedding_params(network: PreTrainedModel) -> int:
    """Parameters besides the token embedding and the LM head (one matrix when tied)."""
    apart = {
        id(m.weight) for m in (network.get_input_embeddings(), network.get_output_embeddings())
    }
    return sum(p.numel() for p in network.parameters() if id(p) not in apart)


def logit_positions(batches: Sequence[Batch], keep_logits: bool = True) -> int:
    """Positions whose logits the scorer computes: with logits_to_keep, every row of a batch
    from the batch's first label position on, padding included; without, every position."""
    return sum(
        len(b.indices) * (b.labels.size(1) - (first_label_position(b.labels) if keep_logits else 0))
        for b in batches
    )


def forward_flops(
    lengths: Sequence[int], logits: int, *, params: int, layers: int, hidden: int, vocab: int
) -> float:
    """FLOPs of one forward pass over samples of these lengths, `logits` positions getting
    logits: see the module's docstring."""
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    return 2 * params * tokens + 4 * layers * hidden * pairs + 2 * hidden * vocab * logits


def random_samples(n: int, seed: int, vocab: int) -> list[EncodedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for length in rng.integers(128, 513, size=n):
        ids = rng.integers(3, vocab, size=int(length)).tolist()
        prompt = int(length) // 2
        out.append(EncodedSample(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def _fastest(fn: Callable[[], object], repeats: int = 2) -> float:
    """Seconds of the fastest of `repeats` runs of fn, the GPU's work included."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_memory(model: ScoringModel, batches: list[Batch], n_samples: int) -> int | None:
    """Most bytes allocated on the GPU while scoring the batches as they are (not cut to the
    memory free); None: they ran out of memory (the scorer then halved them, or failed)."""
    fitted, model.free_memory = model.free_memory, lambda: None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    try:
        model.score(batches, n_samples)
    except ScoringOutOfMemory:
        return None
    finally:
        model.free_memory = fitted
    torch.cuda.synchronize()
    return None if model.token_limit is not None else torch.cuda.max_memory_allocated()


def measure(
    *, samples: int = SAMPLES, one_by_one: int = ONE_BY_ONE, layers: int = 16, toy: bool = False
) -> dict:
    """layers: of the 1B shape's 16; toy: 2 layers and a hundred samples."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    if toy:
        return measure(samples=128, one_by_one=16, layers=2)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    device = torch.device("cuda")
    config = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers})
    network = LlamaForCausalLM(config)  # float32, on the CPU
    params = non_embedding_params(network)
    data = random_samples(samples, seed=0, vocab=config.vocab_size)
    batches = make_batches(data, batch_size=64, max_batch_tokens=32768, pad_id=0)
    longest = batches[-MEMORY_BATCHES:]  # sorted by length: the widest logits come last

    fp32 = ScoringModel(network, device, "full")  # scored as --dtype float32 scores
    memory_fp32 = _peak_memory(fp32, longest, len(data))
    del fp32
    torch.cuda.empty_cache()
    autocast = uses_autocast(device, torch.bfloat16)
    model = ScoringModel(network.bfloat16(), device, "full", autocast=autocast)
    memory_bf16 = _peak_memory(model, longest, len(data))

    model.score(batches[:4], len(data))  # warm-up: kernels, allocator
    batched = _fastest(lambda: model.score(batches, len(data)))

    def bare() -> None:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=model.autocast)
        with torch.no_grad(), autocast:
            for b in batches:
                keep = b.labels.size(1) - first_label_position(b.labels)
                extra = {"logits_to_keep": keep} if model.keep_logits else {}
                model.model(
                    input_ids=b.input_ids.to(device),
                    attention_mask=b.attention_mask.to(device),
                    use_cache=False,
                    **extra,
                )

    forward = _fastest(bare)
    few = data[:one_by_one]
    singles = make_batches(few, batch_size=1, max_batch_tokens=1 << 20, pad_id=0)
    model.score(singles[:8], len(few))  # warm-up at batch size one
    one = _fastest(lambda: model.score(singles, len(few)))
    one_tokens = sum(len(s.input_ids) for s in few)

    lengths = [len(s.input_ids) for s in data]
    tokens = sum(lengths)
    logits = logit_positions(batches, model.keep_logits)
    flops = forward_flops(
        lengths,
        logits,
        params=params,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        vocab=config.vocab_size,
    )
    name = torch.cuda.get_device_name()
    found = peak(name)
    return {
        "device": name,
        "params_non_embedding": params,
        "layers": config.num_hidden_layers,
        "samples": samples,
        "tokens": tokens,
        "logit_positions": logits,
        "flops": flops,
        "batched_tokens_per_s": tokens / batched,
        "bare_forward_tokens_per_s": tokens / forward,
        "one_by_one_tokens_per_s": one_tokens / one,
        "speedup_over_one_by_one": (tokens / batched) / (one_tokens / one),
        "scoring_vs_bare_forward": forward / batched,
        "mfu": flops / batched / found[0] if found else None,
        "bare_mfu": flops / forward / found[0] if found else None,
        "peak_flops": found[0] if found else None,
        "peak_precision": found[1] if found else None,
        "memory_batches": len(longest),
        "memory_float32_bytes": memory_fp32,
        "memory_bfloat16_bytes": memory_bf16,
    }


if __name__ == "__main__":  # `python -m bench` runs it so, apart from the CPU sections
    import json
    import sys

    print(json.dumps(measure(toy="--toy" in sys.argv[1:])))
