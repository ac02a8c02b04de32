"""A tiny random Llama and a byte-level tokenizer, built locally and saved to disk.

Used by the demo, the tests and the benchmarks: nothing is downloaded, and everything is
loaded back through the real `from_pretrained` path.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int = 128,
    max_positions: int = 1024,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Save a random LlamaForCausalLM and a ByT5 tokenizer into out_dir; return it. dtype:
    what its weights are stored in and its config names (bfloat16 or float16, as real
    checkpoints mostly are)."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = ByT5Tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
