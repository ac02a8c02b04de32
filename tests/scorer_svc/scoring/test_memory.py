"""The memory a scoring batch takes per token, against the memory free on the GPU (its
queries mocked: there is no GPU here), and the model cache's share of it."""

import pytest
import torch
from transformers import LlamaConfig

from scorer_svc.scoring import memory
from scorer_svc.scoring.model_cache import GPU_SHARE, default_budget

GIB = 1 << 30
# Llama 3 8B and Llama 2 7B's shapes: the logits dominate a token's cost.
LLAMA3_8B = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336)
LLAMA2_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008)


def test_a_token_costs_its_logits_and_one_layers_activations():
    cost = memory.TokenCost.of(LLAMA3_8B, torch.bfloat16)
    assert cost.bytes_per_token == 2 * (128256 + 8 * 4096 + 3 * 14336)
    # a 16k-token batch of Llama 3 8B in bfloat16: 6.7 GB, 4.2 GB of it logits
    assert 6.5e9 < 16384 * cost.bytes_per_token < 6.9e9
    float32 = memory.TokenCost.of(LLAMA2_7B, torch.float32)
    assert float32.bytes_per_token == 4 * (32000 + 8 * 4096 + 3 * 11008)


def test_the_tokens_a_batch_may_hold_follow_the_free_memory():
    cost = memory.TokenCost.of(LLAMA3_8B, torch.bfloat16)
    twenty = cost.tokens_within(20 * GIB)
    assert 40_000 < twenty < 50_000
    assert cost.tokens_within(10 * GIB) < twenty / 2 + 1  # the fixed loss chunk comes first
    assert cost.tokens_within(0) == 1  # never nothing: one sample is tried, and may fail


def test_a_multimodal_config_is_costed_by_its_text_model():
    class Outer:
        text_config = LLAMA2_7B

    assert memory.TokenCost.of(Outer(), torch.bfloat16) == memory.TokenCost.of(
        LLAMA2_7B, torch.bfloat16
    )


@pytest.fixture
def gpu(monkeypatch):
    """A mocked GPU with 80 GiB: 30 GiB free, 2 GiB of it cached by this process."""
    state = {"free": 28 * GIB, "total": 80 * GIB, "reserved": 12 * GIB, "allocated": 10 * GIB}
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda device=None: (state["free"], state["total"])
    )
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    return state


def test_free_memory_counts_what_the_allocator_holds_unused(gpu):
    assert memory.free_bytes(torch.device("cuda:0")) == 30 * GIB
    assert memory.free_bytes(torch.device("cpu")) is None
    assert "28672 MiB free of 81920 MiB" in memory.describe(torch.device("cuda:0"))


def test_the_model_cache_takes_a_share_of_the_memory_free_at_start(gpu):
    """A trainer beside the scorer already holds 50 GiB of this GPU: the cache's budget is a
    share of what is left, not half of the card."""
    assert default_budget(torch.device("cuda:0")) == int(28 * GIB * GPU_SHARE)
    gpu["free"] = 70 * GIB
    assert default_budget(torch.device("cuda:0")) == int(70 * GIB * GPU_SHARE)
