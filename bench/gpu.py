"""bf16 scoring throughput and model-FLOP utilisation on a GPU (skipped without CUDA).

A randomly initialised Llama of a real 1B-class shape (Llama 3.2 1B's: nothing downloaded)
in bfloat16 scores random samples of 128 to 512 tokens, half prompt, half labels, three ways
over the same tokens: the scorer's batched path (`ScoringModel.score`, length-grouped
batches), a batch of one sample at a time, and a bare forward pass of the batches (no loss,
the ceiling). MFU is the forward FLOPs per token (2 x the non-embedding parameters, plus
attention's 4 x layers x context x hidden) times tokens per second, over the GPU's dense
bf16 peak.
"""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np
import torch

from common.tokenization import IGNORE_INDEX, EncodedSample
from scorer_svc.batching import make_batches
from scorer_svc.scoring import ScoringModel

# Dense bf16 peak FLOP/s by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
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


def peak_flops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def flops_per_token(params: int, layers: int, hidden: int, context: float) -> float:
    """Forward FLOPs per token: the matrix products (2 x parameters) and attention's scores
    and weighted sum (4 x layers x context x hidden)."""
    return 2 * params + 4 * layers * context * hidden


def random_samples(n: int, seed: int, vocab: int) -> list[EncodedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for length in rng.integers(128, 513, size=n):
        ids = rng.integers(3, vocab, size=int(length)).tolist()
        prompt = int(length) // 2
        out.append(EncodedSample(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def _timed(fn) -> float:  # noqa: ANN001
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


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
    network = cast(torch.nn.Module, LlamaForCausalLM(config))
    model = ScoringModel(network.to(torch.bfloat16), device, "full")
    embedding = config.vocab_size * config.hidden_size
    params = sum(p.numel() for p in model.model.parameters()) - embedding
    data = random_samples(samples, seed=0, vocab=config.vocab_size)
    tokens = sum(len(s.input_ids) for s in data)
    mean_context = float(np.mean([len(s.input_ids) for s in data])) / 2
    batches = make_batches(data, batch_size=64, max_batch_tokens=32768, pad_id=0)
    model.score(batches[:4], len(data))  # warm up: kernels, allocator
    batched = min(_timed(lambda: model.score(batches, len(data))) for _ in range(2))

    def bare() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for b in batches:
                model.model(
                    input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device)
                )

    forward = min(_timed(bare) for _ in range(2))
    few = data[:one_by_one]
    singles = make_batches(few, batch_size=1, max_batch_tokens=1 << 20, pad_id=0)
    one = _timed(lambda: model.score(singles, len(few)))
    one_tokens = sum(len(s.input_ids) for s in few)
    per_token = flops_per_token(params, config.num_hidden_layers, config.hidden_size, mean_context)
    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    rate = tokens / batched
    return {
        "device": name,
        "params_non_embedding": params,
        "samples": samples,
        "tokens": tokens,
        "batched_tokens_per_s": rate,
        "bare_forward_tokens_per_s": tokens / forward,
        "one_by_one_tokens_per_s": one_tokens / one,
        "speedup_over_one_by_one": rate / (one_tokens / one),
        "scoring_vs_bare_forward": forward / batched,
        "mfu": rate * per_token / peak if peak else None,
        "bare_mfu": (tokens / forward) * per_token / peak if peak else None,
        "peak_flops": peak,
    }
