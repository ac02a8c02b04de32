"""Turning alpaca samples into (input_ids, labels): the one function trainer and scorer share.

The prompt (instruction and input, wrapped in the template) is labelled -100, so the loss
covers the response only; EOS ends the response. Sequences longer than cutoff_len are cut
at the end; a sample left with no label token has no loss (the scorer stores NULL).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100

# Built-in prompt formats for tokenizers without a chat template (and for `template: name`).
TEMPLATES: dict[str, str] = {
    "plain": "### Instruction:\n{query}\n\n### Response:\n",
    "alpaca": "Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request.\n\n### Instruction:\n{query}\n\n### Response:\n",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\n{query}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatml": "<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n",
    "qwen": "<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n",
}
AUTO = "auto"  # the tokenizer's chat template when it has one, "plain" otherwise
CHAT = "chat"  # the tokenizer's chat template, required
TEMPLATE_NAMES = (AUTO, CHAT, *TEMPLATES)


@dataclass(frozen=True)
class TokenizationSettings:
    template: str = AUTO
    cutoff_len: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "cutoff_len": self.cutoff_len}


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for v in self.labels[1:] if v != IGNORE_INDEX)


def query_text(sample: dict[str, str]) -> str:
    return "\n\n".join(part for part in (sample["instruction"], sample.get("input", "")) if part)


def render_prompt(tokenizer: Any, template: str, query: str) -> str:
    """The prompt text up to where the response starts."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == CHAT or (template == AUTO and has_chat):
        if not has_chat:
            raise ValueError("template 'chat' needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": query}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    name = "plain" if template == AUTO else template
    if name not in TEMPLATES:
        raise ValueError(f"unknown template '{template}'; choose one of {list(TEMPLATE_NAMES)}")
    return TEMPLATES[name].format(query=query)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_sample(
    tokenizer: Any, sample: dict[str, str], settings: TokenizationSettings
) -> EncodedSample:
    prompt = render_prompt(tokenizer, settings.template, query_text(sample))
    prompt_ids = _ids(tokenizer, prompt)
    bos = tokenizer.bos_token_id
    if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
        prompt_ids = [bos, *prompt_ids]
    response_ids = _ids(tokenizer, sample["output"])
    if tokenizer.eos_token_id is not None:
        response_ids.append(tokenizer.eos_token_id)
    input_ids = (prompt_ids + response_ids)[: settings.cutoff_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[: settings.cutoff_len]
    return EncodedSample(input_ids, labels)


def encode_dataset(
    tokenizer: Any, samples: Iterable[dict[str, str]], settings: TokenizationSettings
) -> list[EncodedSample]:
    return [encode_sample(tokenizer, sample, settings) for sample in samples]


def fingerprint(encoded: Iterable[EncodedSample]) -> str:
    """sha256 over every sample's length, input ids and labels (int64 little-endian)."""
    digest = hashlib.sha256()
    for sample in encoded:
        n = len(sample.input_ids)
        digest.update(struct.pack("<q", n))
        digest.update(struct.pack(f"<{n}q", *sample.input_ids))
        digest.update(struct.pack(f"<{n}q", *sample.labels))
    return digest.hexdigest()
