"""Loss of a sample: batched and length-grouped equals the model's own batch-of-one loss."""

import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.data.tokenization import (
    IGNORE_INDEX,
    EncodedSample,
    TokenizationSettings,
    encode_dataset,
)
from common.model_spec import LoraSettings, ModelSpec
from common.wire.errors import CheckpointRejected
from scorer_svc.scoring import model as scoring_model
from scorer_svc.scoring.batches import group_by_length, make_batches
from scorer_svc.scoring.memory import LOSS_CHUNK_BYTES, MARGIN
from scorer_svc.scoring.model import (
    Manifest,
    ScoringModel,
    ScoringOutOfMemory,
    current_device,
    uses_autocast,
)
from tests.support.data import as_samples, make_samples

LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
CPU = torch.device("cpu")


def _load(tiny_model, kind="lora"):
    spec = ModelSpec(str(tiny_model), kind, LORA if kind == "lora" else None)
    return ScoringModel.load(spec, device=CPU, dtype=torch.float32)


def _encoded(tiny_model, n=24, cutoff=1024):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    samples = make_samples(n)
    samples.append({"instruction": "x" * 500, "input": "", "output": "cut off"})
    encoded = encode_dataset(
        tokenizer, as_samples(samples), TokenizationSettings(cutoff_len=cutoff)
    )
    # a long prompt keeps part of its response (prompt and response share cutoff_len) ...
    assert encoded[-1].n_label_tokens > 0
    # ... and a row without any label token (an empty response in a tokenizer without EOS)
    ids = encoded[-1].input_ids[:20]
    return [*encoded, EncodedSample(ids, [IGNORE_INDEX] * len(ids))]


def _reference_losses(model, encoded):
    out = []
    for sample in encoded:
        if sample.n_label_tokens == 0:
            out.append(float("nan"))
            continue
        ids = torch.tensor([sample.input_ids])
        loss = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([sample.labels])
        ).loss
        out.append(loss.item())
    return torch.tensor(out, dtype=torch.float64)


def _perturb_lora(model: ScoringModel, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(spec.shape, generator=g) * 0.1
        for name, spec in model.manifest.specs.items()
    }


def test_batched_losses_equal_batch_of_one(tiny_model):
    encoded = _encoded(tiny_model, cutoff=400)
    lengths = sorted(len(s.input_ids) for s in encoded)
    assert lengths[-1] > 4 * lengths[0]  # very different lengths share batches
    scorer = _load(tiny_model)
    scorer.apply(_perturb_lora(scorer, 1))  # a non-trivial adapter
    batches = make_batches(encoded, batch_size=8, max_batch_tokens=4096, pad_id=0)
    spreads = [
        max(len(encoded[i].input_ids) for i in b.indices)
        - min(len(encoded[i].input_ids) for i in b.indices)
        for b in batches
    ]
    assert max(spreads) > 20  # rows of different lengths share a padded batch
    batched = torch.from_numpy(scorer.score(batches, len(encoded)))
    reference = _reference_losses(scorer.model, encoded)
    assert torch.isnan(batched[-1]) and torch.isnan(reference[-1])  # no label token left
    torch.testing.assert_close(batched[:-1], reference[:-1], atol=1e-4, rtol=0)


def test_full_model_losses_match_the_plain_model(tiny_model):
    encoded = _encoded(tiny_model, n=10)
    scorer = _load(tiny_model, "full")
    batches = make_batches(encoded, batch_size=4, max_batch_tokens=4096, pad_id=0)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    reference = _reference_losses(plain, encoded)
    got = torch.from_numpy(scorer.score(batches, len(encoded)))
    torch.testing.assert_close(got[:-1], reference[:-1], atol=1e-4, rtol=0)


def test_checkpoints_are_copied_in_place(tiny_model):
    scorer = _load(tiny_model)
    pointers = {n: t.data_ptr() for n, t in scorer.targets.items()}
    n_params = sum(p.numel() for p in scorer.model.parameters())
    for seed in range(3):
        tensors = _perturb_lora(scorer, seed)
        scorer.apply(tensors)
        name = next(iter(tensors))
        assert torch.equal(scorer.targets[name], tensors[name])
    assert pointers == {n: t.data_ptr() for n, t in scorer.targets.items()}
    assert n_params == sum(p.numel() for p in scorer.model.parameters())


def test_checkpoint_that_does_not_fit_is_refused(tiny_model):
    scorer = _load(tiny_model)
    table = [(n, "float32", list(s.shape)) for n, s in scorer.manifest.specs.items()]
    scorer.manifest.check(table)
    bad_shape = [(table[0][0], "float32", [1, 2]), *table[1:]]
    with pytest.raises(CheckpointRejected, match="has shape"):
        scorer.manifest.check(bad_shape)
    with pytest.raises(CheckpointRejected, match="unknown tensor"):
        scorer.manifest.check([*table, ("model.evil", "float32", [1])])
    with pytest.raises(CheckpointRejected, match="1 tensors missing"):
        scorer.manifest.check(table[1:])
    with pytest.raises(CheckpointRejected, match="dtype int64"):
        scorer.manifest.check([(table[0][0], "int64", table[0][2]), *table[1:]])


def test_length_grouping_respects_size_and_token_budget():
    lengths = [5, 100, 7, 6, 100, 50]
    groups = group_by_length(lengths, batch_size=2, max_batch_tokens=150)
    assert groups == [[0, 3], [2, 5], [1], [4]]  # sorted by length, ties by index
    assert group_by_length(lengths, batch_size=2, max_batch_tokens=150) == groups


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_weightless_manifest_equals_the_loaded_models(tiny_model, kind):
    spec = ModelSpec(str(tiny_model), kind, LORA if kind == "lora" else None)
    skeleton = spec.skeleton()
    loaded = ScoringModel.load(spec, device=CPU, dtype=torch.float32)
    assert Manifest.of(skeleton, kind) == loaded.manifest
    assert next(skeleton.parameters()).device.type == "meta"


def test_autocast_only_for_a_bfloat16_model_on_cuda():
    """A float32 run is scored in float32 on a GPU too (as the published method scores it);
    `auto` resolves to bfloat16 there, and that one is scored under autocast."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert uses_autocast(cuda, torch.bfloat16)
    assert not uses_autocast(cuda, torch.float32) and not uses_autocast(cuda, torch.float16)
    assert not uses_autocast(cpu, torch.bfloat16)
    model = ScoringModel(torch.nn.Linear(2, 2), cpu, "full", autocast=True)
    assert not model.autocast  # never on the CPU


class _ForwardLog:
    """Records each forward's keyword arguments; raises out-of-memory above max_tokens padded
    tokens (an injected GPU out-of-memory error) when given."""

    def __init__(self, model: torch.nn.Module, max_tokens: int | None = None):
        self.calls: list[dict] = []
        self.max_tokens = max_tokens
        self.raised = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append(kwargs)
        tokens = kwargs["input_ids"].numel()
        if self.max_tokens is not None and tokens > self.max_tokens:
            self.raised += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory ({tokens} tokens)")


def _batches(tiny_model, n=24, batch_size=8):
    encoded = _encoded(tiny_model, n=n, cutoff=400)
    return encoded, make_batches(encoded, batch_size=batch_size, max_batch_tokens=8192, pad_id=0)


def test_scoring_builds_no_kv_cache_and_keeps_the_weights_frozen(tiny_model):
    scorer = _load(tiny_model)
    log = _ForwardLog(scorer.model)
    encoded, batches = _batches(tiny_model, n=6)
    scorer.score(batches, len(encoded))
    assert log.calls and all(call["use_cache"] is False for call in log.calls)
    assert not any(p.requires_grad for p in scorer.model.parameters())
    assert scorer.manifest.specs  # LoRA's tensors are still what a checkpoint carries


def test_the_base_model_is_loaded_in_the_configured_dtype(tiny_bf16_model):
    """A bfloat16 model scored in float32 (the CPU's `auto`) is loaded in float32, and a
    float32 model asked for in bfloat16 is loaded in bfloat16: the setting decides."""
    spec = ModelSpec(str(tiny_bf16_model), "full")
    as_float = ScoringModel.load(spec, device=CPU, dtype=torch.float32)
    assert {p.dtype for p in as_float.model.parameters()} == {torch.float32}
    as_bf16 = ScoringModel.load(spec, device=CPU, dtype=torch.bfloat16)
    assert {p.dtype for p in as_bf16.model.parameters()} == {torch.bfloat16}


def test_out_of_memory_halves_the_batch_and_the_next_checkpoint_starts_there(tiny_model):
    scorer = _load(tiny_model)
    scorer.apply(_perturb_lora(scorer, 3))
    encoded, batches = _batches(tiny_model)
    reference = scorer.score(batches, len(encoded))
    widest = max(b.padded_tokens for b in batches)
    log = _ForwardLog(scorer.model, max_tokens=widest // 3)
    got = scorer.score(batches, len(encoded))
    assert log.raised > 0 and scorer.token_limit is not None
    assert scorer.token_limit <= widest // 3
    torch.testing.assert_close(
        torch.from_numpy(got), torch.from_numpy(reference), atol=1e-5, rtol=0, equal_nan=True
    )
    raised, calls = log.raised, len(log.calls)
    again = scorer.score(batches, len(encoded))  # the next checkpoint: the batch that worked
    assert log.raised == raised and len(log.calls) > calls
    assert all(
        c["input_ids"].numel() <= scorer.token_limit or c["input_ids"].size(0) == 1
        for c in log.calls[calls:]
    )
    torch.testing.assert_close(
        torch.from_numpy(again), torch.from_numpy(reference), atol=1e-5, rtol=0, equal_nan=True
    )


def test_one_sample_that_does_not_fit_fails_with_the_figures(tiny_model):
    scorer = _load(tiny_model)
    encoded, batches = _batches(tiny_model, n=6)
    _ForwardLog(scorer.model, max_tokens=0)
    with pytest.raises(ScoringOutOfMemory, match=r"one sample of \d+ tokens on cpu"):
        scorer.score(batches, len(encoded))


def test_batches_are_cut_to_what_the_free_memory_holds(tiny_model):
    scorer = _load(tiny_model)
    encoded, batches = _batches(tiny_model)
    reference = scorer.score(batches, len(encoded))
    assert scorer.token_cost is not None
    room = 150  # tokens; a mocked query of the device's free memory
    free = (room * scorer.token_cost.bytes_per_token + LOSS_CHUNK_BYTES) / (1 - MARGIN)
    scorer.free_memory = lambda: int(free) + 1
    assert scorer.batch_tokens() == room
    log = _ForwardLog(scorer.model)
    got = scorer.score(batches, len(encoded))
    widths = [call["input_ids"].size(1) for call in log.calls]
    assert len(log.calls) > len(batches)
    assert all(c["input_ids"].numel() <= room or c["input_ids"].size(0) == 1 for c in log.calls)
    assert max(widths) > room // 2  # long samples go alone
    torch.testing.assert_close(
        torch.from_numpy(got), torch.from_numpy(reference), atol=1e-5, rtol=0, equal_nan=True
    )


def test_scoring_makes_the_models_gpu_current_in_its_thread():
    """`--device cuda:2` in one process: the scoring thread would otherwise run its CUDA calls
    (the allocator's cache, the memory queries) against GPU 0."""
    context = current_device(torch.device("cuda:2"))
    assert isinstance(context, torch.cuda.device) and context.idx == 2
    assert not isinstance(current_device(CPU), torch.cuda.device)


def test_score_runs_with_the_models_device_current(tiny_model, monkeypatch):
    scorer = _load(tiny_model)
    entered = []
    real = scoring_model.current_device
    monkeypatch.setattr(scoring_model, "current_device", lambda d: entered.append(d) or real(d))
    encoded, batches = _batches(tiny_model, n=4)
    scorer.score(batches, len(encoded))
    assert entered == [CPU]


class OwnCode(torch.nn.Module):
    """A model of its own code (trust_remote_code) whose forward takes no use_cache."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_a_model_whose_forward_takes_no_use_cache_is_scored(tiny_model):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    scorer = ScoringModel(OwnCode(plain), CPU, "full")
    assert scorer.no_cache == {} and plain.config.use_cache is False  # told by its config
    encoded, batches = _batches(tiny_model, n=6)
    losses = scorer.score(batches, len(encoded))
    assert np.isfinite(losses[[i for b in batches for i in b.indices]]).all()


def test_non_finite_losses_are_counted_in_a_warning(tiny_model, caplog):
    scorer = _load(tiny_model, "full")
    encoded, batches = _batches(tiny_model, n=6)
    with torch.no_grad():
        scorer.model.lm_head.weight[0, 0] = float("inf")
    with caplog.at_level("WARNING", logger="scorer_svc.scoring.model"):
        scorer.score(batches, len(encoded), desc="run x step 2")
    assert re.search(r"run x step 2: \d+ of \d+ samples have a non-finite loss", caplog.text)
    assert "dtype: float32" in caplog.text
