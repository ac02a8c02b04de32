"""The built-in templates lay a conversation out as LLaMA-Factory's templates of the same name.

Each expected string below is written by hand from LLaMA-Factory's register_template call
for that name (src/llamafactory/data/template.py): its format_prefix, format_system,
format_user and format_assistant slots, {"bos_token"} and {"eos_token"} written here as
<s> and </s>.
"""

import pytest

from common.data.samples import Sample
from common.data.templates import BOS, EOS, TEMPLATES, fill, render_text, render_turns, text_of

TWO_TURNS = Sample(turns=(("U1", "A1"), ("U2", "A2")), system="S")

EXPECTED = {
    # this project's own format: BOS, the system prompt, instruction and response, EOS
    "plain": "<s>S\n\n### Instruction:\nU1\n\n### Response:\nA1</s>"
    "### Instruction:\nU2\n\n### Response:\nA2</s>",
    # LF "alpaca": system "{{content}}"; user "### Instruction:\n{{content}}\n\n### Response:\n";
    # assistant ["{{content}}", eos, "\n\n"]
    "alpaca": "S### Instruction:\nU1\n\n### Response:\nA1</s>\n\n"
    "### Instruction:\nU2\n\n### Response:\nA2</s>\n\n",
    # LF "chatml": <|im_start|>role\n...<|im_end|>\n for each message
    "chatml": "<|im_start|>system\nS<|im_end|>\n"
    "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
    "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n",
    # LF "default": system ["System: {{content}}", eos, "\n"]; user ["Human: {{content}}", eos,
    # "\nAssistant:"]; assistant ["{{content}}", eos, "\n"]
    "default": "System: S</s>\nHuman: U1</s>\nAssistant:A1</s>\nHuman: U2</s>\nAssistant:A2</s>\n",
    # LF "empty": every format is "{{content}}" alone, no EOS
    "empty": "SU1A1U2A2",
    # LF "gemma" (Llama2Template: the system text opens the first user message), prefix bos
    "gemma": "<s><start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\n"
    "A1<end_of_turn>\n<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\nA2<end_of_turn>\n",
    # LF "llama3": prefix bos, header/eot formats, assistant "{{content}}<|eot_id|>"
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA2<|eot_id|>",
    # LF "mistral" (Llama2Template), prefix bos, user "[INST] {{content}}[/INST]",
    # assistant [" {{content}}", eos]
    "mistral": "<s>[INST] S\n\nU1[/INST] A1</s>[INST] U2[/INST] A2</s>",
    # LF "qwen": chatml layout (its default system is used only when the sample has none)
    "qwen": "<|im_start|>system\nS<|im_end|>\n"
    "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
    "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n",
}

# How each template ends an assistant turn: its response text after the assistant's content.
TURN_END = {
    "plain": "</s>",
    "alpaca": "</s>\n\n",
    "chatml": "<|im_end|>\n",
    "default": "</s>\n",
    "empty": "",
    "gemma": "<end_of_turn>\n",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "qwen": "<|im_end|>\n",
}


def test_every_built_in_template_has_an_expected_text():
    assert set(EXPECTED) == set(TEMPLATES) == set(TURN_END)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_two_turns_with_a_system_prompt(name):
    assert render_text(TEMPLATES[name], TWO_TURNS, "<s>", "</s>") == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_response_is_the_assistant_turn_and_its_end(name):
    """The response pieces (what is labelled) are the assistant turns, ended as LF ends them;
    the prompts are the rest, so prompt and response together are the whole text."""
    turns = render_turns(TEMPLATES[name], TWO_TURNS)
    responses = [text_of(response, "<s>", "</s>") for _, response in turns]
    lead = " " if name == "mistral" else ""  # LF's mistral assistant is " {{content}}"
    assert responses == [f"{lead}A1{TURN_END[name]}", f"{lead}A2{TURN_END[name]}"]
    prompts = [text_of(prompt, "<s>", "</s>") for prompt, _ in turns]
    assert "".join(p + r for p, r in zip(prompts, responses, strict=True)) == EXPECTED[name]


def test_default_system_prompt_when_the_sample_has_none():
    sample = Sample(turns=(("U", "A"),))
    assert render_text(TEMPLATES["qwen"], sample) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )
    assert render_text(TEMPLATES["alpaca"], sample, eos="</s>") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nU\n\n### Response:\nA</s>\n\n"
    )
    # no default system: no system turn at all (not an empty one)
    assert render_text(TEMPLATES["llama3"], sample) == (
        "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>"
    )
    assert render_text(TEMPLATES["gemma"], sample) == (
        "<start_of_turn>user\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
    )


def test_the_sample_system_prompt_replaces_the_default():
    text = render_text(TEMPLATES["qwen"], Sample(turns=(("U", "A"),), system="Be brief."))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "Qwen" not in text


def test_bos_and_eos_stay_tokens_until_written_out():
    prompt, response = render_turns(TEMPLATES["mistral"], Sample(turns=(("U", "A"),)))[0]
    assert prompt == (BOS, "[INST] U[/INST]") and response == (" A", EOS)
    assert text_of(prompt) + text_of(response) == "[INST] U[/INST] A"  # a tokenizer without them


def test_content_is_filled_in_once_and_taken_literally():
    assert fill(("<{content}>{content}", EOS), "{content}x") == ("<{content}x>{content}", EOS)
