"""Turning samples into (input_ids, labels): the one function trainer and scorer share.

A sample is laid out turn by turn, by a built-in template (common/data/templates.py) or by the
tokenizer's own chat template. Every assistant turn is trained on: its tokens, including
what ends the turn, are the labels; the system prompt and the user turns are -100. A sample
longer than cutoff_len is cut turn by turn, each turn's prompt and response sharing what is
left of the budget (`infer_seqlen`), so a long prompt no longer leaves its response without
tokens; a sample left with no label token has no loss (the scorer stores NULL).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

from common.data.samples import Sample
from common.data.templates import BOS, TEMPLATES, Piece, Special, render_turns, text_of

IGNORE_INDEX = -100

AUTO = "auto"  # the tokenizer's chat template when it has one, "plain" otherwise
CHAT = "chat"  # the tokenizer's chat template, required
TEMPLATE_NAMES = (AUTO, CHAT, *TEMPLATES)


def template_problem(name: str) -> str | None:
    """Why `name` is no template here, with what to choose instead; None when it is one."""
    if name in TEMPLATE_NAMES:
        return None
    return (
        f"'{name}' is not a template this tool builds in; use auto, the tokenizer's own chat "
        "template (what a model's LLaMA-Factory template such as qwen3 or llama3 reproduces), "
        f"or one of {', '.join(TEMPLATE_NAMES[1:])}"
    )


def _check_template(name: str) -> str:
    problem = template_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


# A config field naming a template.
TemplateName = Annotated[str, AfterValidator(_check_template)]


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be split into turns for this sample."""


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


# ---- truncation ----
def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """How many prompt (source) and response (target) tokens of a turn fit in cutoff_len.

    A response shorter than half the budget is kept whole and the prompt gets the rest; else
    a prompt shorter than half is kept whole and the response gets the rest; else both are
    cut, the response keeping its share of the budget (rounded down) and the prompt the rest.
    """
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target = min(max_target, target_len)
    new_source = min(max(cutoff_len - new_target, 0), source_len)
    return new_source, new_target


def join_turns(turns: Iterable[tuple[list[int], list[int]]], cutoff_len: int) -> EncodedSample:
    """The turns' (prompt ids, response ids) one after another, responses labelled, each turn
    cut to what is left of cutoff_len; turns after the budget is used up are left out."""
    input_ids: list[int] = []
    labels: list[int] = []
    for source, target in turns:
        budget = cutoff_len - len(input_ids)
        if budget <= 0:
            break
        n_source, n_target = infer_seqlen(len(source), len(target), budget)
        input_ids += source[:n_source] + target[:n_target]
        labels += [IGNORE_INDEX] * n_source + target[:n_target]
    return EncodedSample(input_ids, labels)


# ---- the turns of a sample, as pieces ----
def turn_pieces(tokenizer: Any, sample: Sample, template: str) -> list[tuple[Piece, Piece]]:
    """Each turn's prompt and response as `template` lays them out for this tokenizer."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == CHAT or (template == AUTO and has_chat):
        if not has_chat:
            raise ValueError("template 'chat' needs a tokenizer with a chat template")
        return chat_template_turns(tokenizer, sample)
    name = "plain" if template == AUTO else template
    if name not in TEMPLATES:
        raise ValueError(f"unknown template '{template}'; choose one of {list(TEMPLATE_NAMES)}")
    return render_turns(TEMPLATES[name], sample)


def chat_messages(sample: Sample, n_turns: int, with_answer: bool) -> list[dict[str, str]]:
    """The messages of the first n_turns turns, the last one's answer only if with_answer."""
    messages = [{"role": "system", "content": sample.system}] if sample.system else []
    for i, (user, assistant) in enumerate(sample.turns[:n_turns]):
        messages.append({"role": "user", "content": user})
        if i < n_turns - 1 or with_answer:
            messages.append({"role": "assistant", "content": assistant})
    return messages


def chat_template_turns(tokenizer: Any, sample: Sample) -> list[tuple[Piece, Piece]]:
    """Each turn's prompt and response as the tokenizer's chat template writes them.

    The conversation is rendered up to each user turn (with the generation prompt) and up to
    each assistant turn; each piece is what one rendering adds to the one before. The first
    prompt opens with BOS when the tokenizer puts BOS before any text it encodes and the
    template does not write it itself.
    """

    def render(n_turns: int, with_answer: bool) -> str:
        messages = chat_messages(sample, n_turns, with_answer)
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not with_answer
        )

    turns: list[tuple[Piece, Piece]] = []
    done = ""
    for n in range(1, len(sample.turns) + 1):
        asked, answered = render(n, False), render(n, True)
        if not asked.startswith(done) or not answered.startswith(asked):
            raise ChatTemplateError(
                f"the tokenizer's chat template cannot be split into turns for the sample "
                f"whose turn {n} asks {sample.turns[n - 1][0][:60]!r}: its text up to that turn "
                "is not the start of its text with the turn's next message added; pick a "
                f"built-in template instead, one of {list(TEMPLATES)}"
            )
        turns.append(((asked[len(done) :],), (answered[len(asked) :],)))
        done = answered
    if _puts_bos_first(tokenizer) and not done.startswith(tokenizer.bos_token):
        first_prompt, first_response = turns[0]
        turns[0] = ((BOS, *first_prompt), first_response)
    return turns


def _puts_bos_first(tokenizer: Any) -> bool:
    """The tokenizer opens the text it encodes with BOS (as a model expects its input)."""
    if tokenizer.bos_token_id is None:
        return False
    return list(tokenizer("a")["input_ids"][:1]) == [tokenizer.bos_token_id]


def render_turn_texts(tokenizer: Any, sample: Sample, template: str) -> list[tuple[str, str]]:
    """Each turn's prompt and response as text, BOS and EOS written as the tokenizer's own."""
    return [
        (_text(tokenizer, prompt), _text(tokenizer, response))
        for prompt, response in turn_pieces(tokenizer, sample, template)
    ]


def _text(tokenizer: Any, piece: Piece) -> str:
    return text_of(piece, tokenizer.bos_token, tokenizer.eos_token)


# ---- ids ----
def piece_ids(tokenizer: Any, piece: Piece) -> list[int]:
    """Each text slot tokenized on its own (special tokens written in it become those tokens
    when the tokenizer has them); BOS and EOS as the tokenizer's ids, nothing if it has none."""
    ids: list[int] = []
    for slot in piece:
        if isinstance(slot, Special):
            token_id = tokenizer.bos_token_id if slot is BOS else tokenizer.eos_token_id
            ids += [] if token_id is None else [token_id]
        elif slot:
            ids += tokenizer(slot, add_special_tokens=False)["input_ids"]
    return ids


def encode_sample(tokenizer: Any, sample: Sample, settings: TokenizationSettings) -> EncodedSample:
    turns = turn_pieces(tokenizer, sample, settings.template)
    ids = [(piece_ids(tokenizer, prompt), piece_ids(tokenizer, reply)) for prompt, reply in turns]
    return join_turns(ids, settings.cutoff_len)


def encode_dataset(
    tokenizer: Any, samples: Iterable[Sample], settings: TokenizationSettings
) -> list[EncodedSample]:
    encoded = []
    for i, sample in enumerate(samples):
        try:
            encoded.append(encode_sample(tokenizer, sample, settings))
        except ChatTemplateError as exc:
            raise ChatTemplateError(f"sample {i}: {exc}") from exc
    return encoded


def fingerprint(encoded: Iterable[EncodedSample]) -> str:
    """sha256 over every sample's length, input ids and labels (int64 little-endian)."""
    digest = hashlib.sha256()
    for sample in encoded:
        n = len(sample.input_ids)
        digest.update(struct.pack("<q", n))
        digest.update(struct.pack(f"<{n}q", *sample.input_ids))
        digest.update(struct.pack(f"<{n}q", *sample.labels))
    return digest.hexdigest()
