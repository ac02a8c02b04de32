"""How many tokens one scoring forward pass may hold on a GPU: the memory each token takes at
inference (its logits over the vocabulary, its activations in one layer) against the memory
free there. Pure arithmetic, but for the query of what is free.

A forward pass without a KV cache or gradients keeps, per token, the logits (vocabulary x the
model's itemsize) and one layer's activations at a time (the hidden state a few times over and
the MLP's intermediate a few times over). The float32 copy the loss takes of the logits is
bounded by per_sample_losses' chunk and is counted once, as a fixed cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MARGIN = 0.1  # of the free memory, left for the allocator's fragmentation and the loss
LOSS_CHUNK_BYTES = (1 << 25) * 4 * 3  # per_sample_losses' float32 chunk, its log-softmax, sums


@dataclass(frozen=True)
class TokenCost:
    """Bytes one token of a scoring batch takes at inference, for one model and dtype."""

    vocab: int
    hidden: int
    intermediate: int
    itemsize: int

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype) -> TokenCost:
        """From a transformers config (a multimodal one's text_config when it has one)."""
        text = getattr(config, "text_config", None) or config
        hidden = int(getattr(text, "hidden_size", 0) or 0)
        intermediate = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
        vocab = int(getattr(text, "vocab_size", 0) or 0)
        itemsize = torch.empty((), dtype=dtype).element_size()
        return cls(vocab, hidden, intermediate, itemsize)

    @property
    def bytes_per_token(self) -> int:
        return self.itemsize * (self.vocab + 8 * self.hidden + 3 * self.intermediate)

    def tokens_within(self, free_bytes: int) -> int:
        """The padded tokens a batch may hold with free_bytes free (at least 1)."""
        usable = int(free_bytes * (1 - MARGIN)) - LOSS_CHUNK_BYTES
        return max(1, usable // max(1, self.bytes_per_token))


def free_bytes(device: torch.device) -> int | None:
    """Memory a scoring batch may take on a CUDA device: what the driver reports free plus
    what this process's allocator holds unused. None on other devices (the host's memory is
    not budgeted: max_batch_tokens alone bounds a CPU batch)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)


def release_device_cache(device: torch.device) -> None:
    """Give the blocks this process's allocator keeps cached back to the driver, so that a
    trainer on the same GPU can use them between checkpoints."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def describe(device: torch.device) -> str:
    """The device's memory, for an error message: free and total, or nothing on a CPU."""
    if device.type != "cuda":
        return f"on {device}"
    free, total = torch.cuda.mem_get_info(device)
    held = torch.cuda.memory_allocated(device)
    return (
        f"on {device}: {free >> 20} MiB free of {total >> 20} MiB, {held >> 20} MiB held by "
        "this scorer's models and buffers"
    )
