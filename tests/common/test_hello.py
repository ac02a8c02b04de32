"""The hello a trainer sends: built from the run's model, data and settings."""

from transformers import AutoTokenizer

from common.datasets import DatasetSpec
from common.hello import build_hello
from common.model_spec import LoraSettings, ModelSpec, checkpoint_digest
from common.protocol import decode_request, encode_hello
from common.tokenization import TokenizationSettings, encode_dataset, fingerprint
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
