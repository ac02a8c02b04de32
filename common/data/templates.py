"""Built-in prompt formats: how a conversation is laid out as text before it is tokenized.

A template wraps each user turn, each assistant turn and the system prompt in fixed text, and
may open the conversation with a prefix (usually BOS). The formats follow LLaMA-Factory's
templates of the same name, so that a run here sees the token sequences a LLaMA-Factory run
would; `plain` is this project's own format.

Formats are tuples of slots. A text slot is tokenized on its own, with `{content}` replaced
by the message; BOS and EOS slots stand for the tokenizer's own tokens and vanish when the
tokenizer has none. The user format ends where the assistant's text begins, so a turn's
prompt is everything up to its response, and the response includes whatever ends the turn
(EOS, or the template's own end-of-turn text).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from common.data.samples import Sample

CONTENT = "{content}"


class Special(Enum):
    """A slot that stands for one of the tokenizer's special tokens."""

    BOS = "bos_token"
    EOS = "eos_token"


BOS, EOS = Special.BOS, Special.EOS

Slot = str | Special
Piece = tuple[Slot, ...]  # a stretch of a conversation: text slots and special tokens, in order


@dataclass(frozen=True)
class Template:
    user: Piece  # one user turn, ending where the assistant's text begins
    assistant: Piece  # one assistant turn, with whatever ends it
    system: Piece = (CONTENT,)  # the system prompt, before the first user turn
    default_system: str = ""  # the system prompt of a sample that has none
    prefix: Piece = ()  # what opens the conversation, before the system prompt
    system_in_user: bool = False  # the system text opens the first user message's content


TEMPLATES: dict[str, Template] = {
    # This project's own format; one turn without a system prompt is as it always was.
    "plain": Template(
        user=("### Instruction:\n{content}\n\n### Response:\n",),
        assistant=(CONTENT, EOS),
        system=("{content}\n\n",),
        prefix=(BOS,),
    ),
    "alpaca": Template(
        user=("### Instruction:\n{content}\n\n### Response:\n",),
        assistant=(CONTENT, EOS, "\n\n"),
        default_system="Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n",
    ),
    "chatml": Template(
        user=("<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",),
        assistant=("{content}<|im_end|>\n",),
        system=("<|im_start|>system\n{content}<|im_end|>\n",),
    ),
    "default": Template(
        user=("Human: {content}", EOS, "\nAssistant:"),
        assistant=(CONTENT, EOS, "\n"),
        system=("System: {content}", EOS, "\n"),
    ),
    "empty": Template(user=(CONTENT,), assistant=(CONTENT,)),
    "gemma": Template(
        user=("<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",),
        assistant=("{content}<end_of_turn>\n",),
        system=("{content}\n\n",),
        prefix=(BOS,),
        system_in_user=True,
    ),
    "llama3": Template(
        user=(
            "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        assistant=("{content}<|eot_id|>",),
        system=("<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",),
        prefix=(BOS,),
    ),
    "mistral": Template(
        user=("[INST] {content}[/INST]",),
        assistant=(" {content}", EOS),
        system=("{content}\n\n",),
        prefix=(BOS,),
        system_in_user=True,
    ),
    "qwen": Template(
        user=("<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",),
        assistant=("{content}<|im_end|>\n",),
        system=("<|im_start|>system\n{content}<|im_end|>\n",),
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    ),
}


def fill(piece: Piece, content: str) -> Piece:
    """The piece with the message in place of `{content}` (once per text slot)."""
    return tuple(s.replace(CONTENT, content, 1) if isinstance(s, str) else s for s in piece)


def system_prompt(template: Template, sample: Sample) -> str:
    """The sample's own system prompt, else the template's default (possibly none)."""
    return sample.system or template.default_system


def render_turns(template: Template, sample: Sample) -> list[tuple[Piece, Piece]]:
    """Each turn's prompt and response, in order; together they are the whole conversation.

    The first prompt carries the prefix and the system prompt (either on its own or, for
    templates that have no system turn, at the start of the first user message).
    """
    system = system_prompt(template, sample)
    turns = []
    for i, (user, assistant) in enumerate(sample.turns):
        prompt: Piece = ()
        if i == 0:
            prompt = template.prefix
            if system and template.system_in_user:
                user = text_of(fill(template.system, system)) + user
            elif system:
                prompt += fill(template.system, system)
        turns.append((prompt + fill(template.user, user), fill(template.assistant, assistant)))
    return turns


def text_of(piece: Piece, bos: str | None = None, eos: str | None = None) -> str:
    """The piece as text, BOS and EOS written as the given token texts (none: left out)."""
    specials = {BOS: bos or "", EOS: eos or ""}
    return "".join(s if isinstance(s, str) else specials[s] for s in piece)


def render_text(
    template: Template, sample: Sample, bos: str | None = None, eos: str | None = None
) -> str:
    """The whole conversation as one text."""
    return "".join(
        text_of(prompt, bos, eos) + text_of(response, bos, eos)
        for prompt, response in render_turns(template, sample)
    )
