"""The hello a trainer sends: built from the run's model, data and settings."""

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from common.data.datasets import DatasetSpec
from common.data.tokenization import TokenizationSettings, encode_dataset, fingerprint
from common.model_spec import LoraSettings, ModelSpec, checkpoint_digest
from common.wire.hello import build_hello
from common.wire.protocol import Hello, decode_request, encode_hello
from tests.support.data import as_samples, make_samples


def test_hello_carries_the_model_data_and_digests(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = TokenizationSettings(template="plain", cutoff_len=64)
    encoded = encode_dataset(tokenizer, as_samples(make_samples(5)), settings)
    spec = ModelSpec(str(tiny_model), "lora", LoraSettings(4, 8.0, 0.0, "all-linear"))
    digest = checkpoint_digest(spec.skeleton(), "lora")
    hello = build_hello(
        run_id="r1",
        spec=spec,
        dataset=DatasetSpec("/data/train.json,alpaca_en", "/data", max_samples=100),
        val_size=0.1,
        split_seed=7,
        tokenization=settings,
        encoded=encoded,
        window_size=0.2,
        update_times=3,
        vocab_size=len(tokenizer),
        model_digest=digest,
        token="secret",
    )
    assert decode_request(encode_hello(hello)) == hello
    assert (hello.n_samples, hello.fingerprint) == (5, fingerprint(encoded))
    assert hello.lora is not None and hello.lora.r == 4 and hello.finetuning_type == "lora"
    assert hello.tokenization.model_dump() == {"template": "plain", "cutoff_len": 64}
    assert ModelSpec.from_hello(hello) == spec
    assert (hello.model_digest, hello.token) == (digest, "secret")
    assert (hello.dataset, hello.dataset_dir) == ("/data/train.json,alpaca_en", "/data")
    assert (hello.max_samples, hello.val_size, hello.split_seed) == (100, 0.1, 7)


def test_hello_carries_how_the_run_draws_and_its_scoring_budget(tiny_model):
    """Both default to the published method (sync, every sample), so a hello from a trainer
    that sends neither means that; a budget above 1 is a whole number of samples."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = TokenizationSettings(template="plain", cutoff_len=64)
    encoded = encode_dataset(tokenizer, as_samples(make_samples(5)), settings)
    spec = ModelSpec(str(tiny_model), "full")
    common = dict(run_id="r1", spec=spec, dataset=DatasetSpec("/d.json"), tokenization=settings,
                  encoded=encoded, window_size=0.2, update_times=3)  # fmt: skip
    plain = build_hello(**common)
    assert (plain.selection_mode, plain.score_budget) == ("sync", 1.0)
    hello = build_hello(**common, selection_mode="async", score_budget=0.1)
    assert decode_request(encode_hello(hello)) == hello
    assert (hello.selection_mode, hello.score_budget) == ("async", 0.1)
    for bad in (0.0, 2.5, -1.0):
        with pytest.raises(ValidationError):
            Hello.model_validate({**plain.model_dump(), "score_budget": bad})


def test_hello_carries_the_runs_name_and_tags(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = TokenizationSettings(template="plain", cutoff_len=64)
    encoded = encode_dataset(tokenizer, as_samples(make_samples(5)), settings)
    common = dict(run_id="r1", spec=ModelSpec(str(tiny_model), "full"),
                  dataset=DatasetSpec("/d.json"), tokenization=settings, encoded=encoded,
                  window_size=0.2, update_times=3)  # fmt: skip
    plain = build_hello(**common)
    assert (plain.run_name, plain.tags) == (None, {})
    hello = build_hello(**common, run_name="qwen 20%", tags={"team": "nlp"})
    assert decode_request(encode_hello(hello)) == hello
    assert (hello.run_name, hello.tags) == ("qwen 20%", {"team": "nlp"})
    for bad in ({"run_name": "a\nb"}, {"tags": {"k=v": "x"}}, {"tags": {"k": "x" * 5001}}):
        with pytest.raises(ValidationError):
            Hello.model_validate({**plain.model_dump(), **bad})
