"""Memory on the first GPU, with the old code paths and the current ones: what a scoring batch
and full fine-tuning hold, computed for 7-8B models from their shapes, and measured on the CPU
with the tiny model (the KV cache a scoring forward built, the optimizer's bytes, how many
updates a bfloat16 weight keeps at lr 1e-5, the batches an out-of-memory error leaves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from common.data.tokenization import IGNORE_INDEX, EncodedSample
from delta_loss_devtools.tiny_model import build_tiny_model
from scorer_svc.scoring.batches import make_batches
from scorer_svc.scoring.memory import TokenCost
from scorer_svc.scoring.model import ScoringModel
from scorer_svc.scoring.model_cache import GPU_SHARE
from trainer_svc.training.precision import upcast_trainable

SECTION = "## 15. Memory on the first GPU: the old code paths and the current ones"
GB = 1e9
TOKENS = 16384  # the default max_batch_tokens
# Shapes (and parameter counts) of the two model families users fine-tune most at this size.
MODELS = {
    "Llama 3 8B": (
        LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
        8.03e9,
    ),
    "Llama 2 7B": (
        LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
        6.74e9,
    ),
}  # fmt: skip
RANKS = 8  # scorer ranks on one host


def kv_cache_bytes(config: LlamaConfig, tokens: int, itemsize: int = 2) -> int:
    """Keys and values of every layer for `tokens` tokens (what use_cache builds)."""
    head_dim = config.hidden_size // config.num_attention_heads
    kv_heads = int(config.num_key_value_heads or config.num_attention_heads)
    return 2 * config.num_hidden_layers * tokens * kv_heads * head_dim * itemsize


def pinned_rounded(nbytes: int) -> int:
    """What torch's caching host allocator takes for a pinned buffer: the next power of two."""
    return 1 << (nbytes - 1).bit_length()


def computed() -> dict[str, Any]:
    out = {}
    for name, (config, params) in MODELS.items():
        cost = TokenCost.of(config, torch.bfloat16)
        checkpoint = 2 * params  # a full bfloat16 checkpoint
        out[name] = {
            "kv_cache_gb": kv_cache_bytes(config, TOKENS) / GB,
            "logits_gb": TOKENS * config.vocab_size * 2 / GB,
            "batch_gb": TOKENS * cost.bytes_per_token / GB,
            "tokens_in_20gb": cost.tokens_within(20 << 30),
            # full fine-tuning, per parameter: weights, gradients, Adam's two moments
            "pure_bf16_gb": params * (2 + 2 + 2 + 2) / GB,
            "master_fp32_gb": params * (4 + 4 + 4 + 4) / GB,
            "host_copies_before_gb": RANKS * checkpoint / GB,
            "host_copies_after_gb": checkpoint / GB,
            "pinned_before_gb": pinned_rounded(int(checkpoint)) / GB,
            "pinned_after_gb": checkpoint / GB,
        }
    # the model cache's default budget on an 80 GB GPU where a trainer holds 50 GB
    out["cache_budget"] = {"before_gb": 80 / 2, "after_gb": 30 * GPU_SHARE, "free_gb": 30}
    return out


def _samples(n: int, length: int) -> list[EncodedSample]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(3, 250, size=length).tolist()
        out.append(EncodedSample(ids, [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]))
    return out


def _kv_cache_measured(model_dir: Path) -> dict[str, int]:
    """Bytes of the cache a scoring forward returns, the old way (the model's default) and
    the scorer's (use_cache=False)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(3, 250, (16, 256))
    sizes = {}
    with torch.no_grad():
        for label, extra in (("before", {}), ("after", {"use_cache": False})):
            cache = model(input_ids=ids, **extra).past_key_values
            tensors = (
                []
                if cache is None
                else [t for layer in cache.layers for t in (layer.keys, layer.values)]
            )
            sizes[label] = sum(t.numel() * t.element_size() for t in tensors)
    return sizes


def _training_steps(model_dir: Path, *, master: bool, steps: int = 20) -> dict[str, float]:
    """steps AdamW steps at lr 1e-5 on one batch, the bfloat16 tiny model fully fine-tuned
    under bfloat16 autocast: the bytes of weights, gradients and optimizer state, the share of
    weights whose bfloat16 value moved (the weights themselves, or the float32 masters rounded
    to bfloat16: what a bfloat16 checkpoint of the run would hold), and the loss before and
    after."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if master:
        upcast_trainable(model)
    before = [p.detach().to(torch.bfloat16, copy=True) for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(3, 250, (4, 64))
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    params = list(model.parameters())
    state = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    nbytes = sum(t.numel() * t.element_size() for t in [*params, *state])
    nbytes += sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    moved = sum(
        int((p.detach().to(torch.bfloat16) != b).sum()) for p, b in zip(params, before, strict=True)
    )
    return {
        "bytes": nbytes,
        "changed": moved / sum(p.numel() for p in params),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "steps": steps,
    }


def _out_of_memory(model_dir: Path) -> dict[str, float]:
    """Scoring with an injected out-of-memory error above a third of the widest batch: the
    passes it took, the limit it kept, and the losses against a pass without the error."""
    from common.model_spec import ModelSpec

    scorer = ScoringModel.load(
        ModelSpec(str(model_dir), "full"), device=torch.device("cpu"), dtype=torch.float32
    )
    data = _samples(64, 128)
    batches = make_batches(data, batch_size=16, max_batch_tokens=TOKENS, pad_id=0)
    reference = scorer.score(batches, len(data))
    widest = max(b.padded_tokens for b in batches)
    passes = {"forwards": 0, "errors": 0}

    def hook(module, args, kwargs):
        passes["forwards"] += 1
        if kwargs["input_ids"].numel() > widest // 3:
            passes["errors"] += 1
            raise torch.OutOfMemoryError("injected")

    scorer.model.register_forward_pre_hook(hook, with_kwargs=True)
    got = scorer.score(batches, len(data))
    forwards_first = passes["forwards"]
    scorer.score(batches, len(data))
    return {
        "batches": len(batches),
        "forwards_first": forwards_first,
        "errors_first": passes["errors"],
        "forwards_next": passes["forwards"] - forwards_first,
        "token_limit": scorer.token_limit or 0,
        "widest": widest,
        "max_diff": float(np.nanmax(np.abs(got - reference))),
    }


def measure(work: Path, toy: bool = False) -> dict[str, Any]:
    bf16 = build_tiny_model(work / "tiny-bf16", dtype="bfloat16")
    fp32 = build_tiny_model(work / "tiny-fp32")
    return {
        "computed": computed(),
        "kv_cache": _kv_cache_measured(fp32),
        "pure_bf16": _training_steps(bf16, master=False),
        "master_fp32": _training_steps(bf16, master=True),
        "out_of_memory": _out_of_memory(fp32),
    }


def render(r: dict[str, Any]) -> list[str]:
    out = [SECTION, ""]
    if "error" in r:
        return out + ["Failed:", "", "```", r["error"], "```", ""]
    c = r["computed"]
    rows = [
        "Computed from the models' shapes (nothing here ran on a GPU); before: the code paths "
        "as they were, after: as they are.",
        "",
        "| per 16,384-token scoring batch, bfloat16 | " + " | ".join(MODELS) + " |",
        "|---|" + "---|" * len(MODELS),
    ]
    for label, key in (
        ("KV cache built and never read (before; after: none)", "kv_cache_gb"),
        ("logits (vocabulary x tokens)", "logits_gb"),
        ("the whole batch as now counted (logits + one layer)", "batch_gb"),
    ):
        rows.append(f"| {label} | " + " | ".join(f"{c[m][key]:.1f} GB" for m in MODELS) + " |")
    rows.append(
        "| tokens a batch may hold with 20 GiB free | "
        + " | ".join(f"{c[m]['tokens_in_20gb']:,}" for m in MODELS) + " |"
    )  # fmt: skip
    rows += [
        "",
        "| full fine-tuning and hand-over | " + " | ".join(MODELS) + " |",
        "|---|" + "---|" * len(MODELS),
    ]
    for label, before, after in (
        ("weights, gradients, Adam states (pure bfloat16 → float32 master weights)",
         "pure_bf16_gb", "master_fp32_gb"),
        (f"host copies of a checkpoint on a {RANKS}-rank scorer host", "host_copies_before_gb",
         "host_copies_after_gb"),
        ("pinned buffer for a checkpoint", "pinned_before_gb", "pinned_after_gb"),
    ):  # fmt: skip
        cells = [f"{c[m][before]:.0f} GB → {c[m][after]:.0f} GB" for m in MODELS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    nine = 9 * GB
    rows += [
        "",
        f"A 9 GB checkpoint's pinned buffer took {pinned_rounded(int(nine)) / GB:.1f} GB of "
        "page-locked memory before (torch's pinned allocator rounds to a power of two) and 9 GB "
        "now (ordinary memory registered with CUDA).",
    ]
    budget = c["cache_budget"]
    kv, oom = r["kv_cache"], r["out_of_memory"]
    pure, master = r["pure_bf16"], r["master_fp32"]
    rows += [
        "",
        f"The model cache's default budget on an 80 GB GPU where a trainer already holds 50 GB: "
        f"{budget['before_gb']:.0f} GB before (half the card, more than is free), "
        f"**{budget['after_gb']:.0f} GB** now ({GPU_SHARE:.0%} of the {budget['free_gb']} GB "
        "free).",
        "",
        "Measured on the CPU with the tiny model:",
        f"- KV cache returned by one scoring forward of 16 x 256 tokens: {kv['before']:,} bytes "
        f"before, **{kv['after']:,}** now.",
        f"- {pure['steps']} AdamW steps at lr 1e-5 on one batch, the bfloat16 tiny model "
        "fully fine-tuned under bfloat16 autocast: pure bfloat16 weights moved "
        f"**{pure['changed']:.1%}** of their values "
        f"(loss {pure['loss_first']:.4f} → {pure['loss_last']:.4f}; "
        f"{pure['bytes'] / 1e6:.2f} MB of weights, gradients and states); float32 master "
        f"weights, rounded to bfloat16 as a checkpoint sends them, **{master['changed']:.1%}** "
        f"(loss {master['loss_first']:.4f} → {master['loss_last']:.4f}; "
        f"{master['bytes'] / 1e6:.2f} MB).",
        f"- An out-of-memory error injected above {oom['widest'] // 3:,} tokens "
        f"({oom['batches']} batches, the widest {oom['widest']:,} tokens): the first pass took "
        f"{oom['forwards_first']} forwards ({oom['errors_first']} of them out of memory) and "
        f"kept a limit of {oom['token_limit']:,} tokens; the next pass took {oom['forwards_next']} "
        "forwards and no error. Losses against a pass without the error: max difference "
        f"{oom['max_diff']:.1e}.",
        "",
    ]
    return out + rows
