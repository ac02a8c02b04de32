"""Tokenization and the dataset fingerprint, on a real tokenizer loaded from disk."""

import json

import pytest
from transformers import AutoTokenizer, ByT5Tokenizer

from common.datasets import DatasetError, load_alpaca, resolve_dataset
from common.tokenization import (
    IGNORE_INDEX,
    TokenizationSettings,
    encode_dataset,
    encode_sample,
    fingerprint,
    render_prompt,
)

SAMPLE = {"instruction": "Add 2 and 3", "input": "", "output": "5"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    ByT5Tokenizer().save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_prompt_is_masked_and_eos_ends_the_response(tokenizer):
    enc = encode_sample(tokenizer, SAMPLE, TokenizationSettings())
    prompt = render_prompt(tokenizer, "auto", "Add 2 and 3")
    n_prompt = len(prompt.encode())  # ByT5: one id per byte
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc.labels[n_prompt:] == [ord("5") + 3, tokenizer.eos_token_id]
    assert enc.input_ids[n_prompt:] == enc.labels[n_prompt:]
    assert enc.n_label_tokens == 2


def test_cutoff_can_leave_no_label_tokens(tokenizer):
    enc = encode_sample(tokenizer, SAMPLE, TokenizationSettings(cutoff_len=10))
    assert len(enc.input_ids) == 10 and enc.n_label_tokens == 0


def test_named_and_chat_templates(tokenizer):
    assert "<|start_header_id|>user" in render_prompt(tokenizer, "llama3", "hi")
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        render_prompt(tokenizer, "nope", "hi")
    with pytest.raises(ValueError, match="chat template"):
        render_prompt(tokenizer, "chat", "hi")
    tokenizer.chat_template = "{% for m in messages %}<u>{{ m['content'] }}{% endfor %}<a>"
    try:
        assert render_prompt(tokenizer, "auto", "hi") == "<u>hi<a>"
    finally:
        tokenizer.chat_template = None


def test_fingerprint_changes_with_any_token_or_label(tokenizer):
    settings = TokenizationSettings()
    base = encode_dataset(tokenizer, [SAMPLE, SAMPLE], settings)
    same = encode_dataset(tokenizer, [SAMPLE, SAMPLE], settings)
    assert fingerprint(base) == fingerprint(same)
    other = encode_dataset(tokenizer, [SAMPLE, {**SAMPLE, "output": "6"}], settings)
    assert fingerprint(base) != fingerprint(other)
    shorter = encode_dataset(tokenizer, [SAMPLE, SAMPLE], TokenizationSettings(cutoff_len=20))
    assert fingerprint(base) != fingerprint(shorter)


def test_datasets_by_path_jsonl_and_dataset_info(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([SAMPLE]))
    (tmp_path / "b.jsonl").write_text(json.dumps(SAMPLE) + "\n" + json.dumps(SAMPLE) + "\n")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"demo": {"file_name": "b.jsonl"}}))
    assert load_alpaca(resolve_dataset(str(tmp_path / "a.json"))) == [SAMPLE]
    assert len(load_alpaca(resolve_dataset("demo", tmp_path))) == 2
    with pytest.raises(DatasetError, match="dataset_info.json"):
        resolve_dataset("missing", tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps([{"input": "x"}]))
    with pytest.raises(DatasetError, match="sample 0 needs"):
        load_alpaca(tmp_path / "bad.json")
