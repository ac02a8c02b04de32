"""Loss of a sample: batched and length-grouped equals the model's own batch-of-one loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.errors import CheckpointRejected
from common.model_spec import LoraSettings, ModelSpec
from common.tokenization import IGNORE_INDEX, EncodedSample, TokenizationSettings, encode_dataset
from scorer_svc.batching import group_by_length, make_batches
from scorer_svc.scoring import Manifest, ScoringModel, uses_autocast
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
