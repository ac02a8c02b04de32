"""Tokenization and the dataset fingerprint, on real tokenizers built and loaded from disk."""

import string

import pytest
from tokenizers import Tokenizer, models, processors
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerFast

from common.data.samples import Sample
from common.data.templates import TEMPLATES
from common.data.tokenization import (
    IGNORE_INDEX,
    ChatTemplateError,
    TokenizationSettings,
    encode_dataset,
    encode_sample,
    fingerprint,
    infer_seqlen,
    join_turns,
    render_turn_texts,
)
from tests.common.data.test_templates import EXPECTED, TURN_END

ROW = Sample(turns=(("Add 2 and 3", "5"),))
TWO_TURNS = Sample(turns=(("U1", "A1"), ("U2", "A2")), system="S")
PLAIN_PROMPT = "### Instruction:\nAdd 2 and 3\n\n### Response:\n"
# A chat template that writes each message between role tags, the system message included.
TAGGED = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """ByT5: one id per byte (byte + 3), EOS 1, no BOS, no chat template."""
    path = tmp_path_factory.mktemp("tok")
    ByT5Tokenizer().save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    """One token per character; BOS <s> (put before every encoded text) and EOS </s>, and
    llama3's header and end-of-turn markers as special tokens (chatml's are not)."""
    specials = ["<unk>", "<s>", "</s>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(string.printable)))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(specials)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    path = tmp_path_factory.mktemp("chars")
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture
def chat_template(tokenizer):
    """Set the ByT5 tokenizer's chat template for one test."""

    def use(template):
        tokenizer.chat_template = template

    yield use
    tokenizer.chat_template = None


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


def labelled_runs(enc) -> list[list[int]]:
    """The label ids in maximal runs of consecutive labelled positions."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in enc.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


# ---- one turn, the plain format ----
def test_prompt_is_masked_and_eos_ends_the_response(tokenizer):
    enc = encode_sample(tokenizer, ROW, TokenizationSettings())  # auto, no chat template: plain
    n_prompt = len(PLAIN_PROMPT)
    assert enc.input_ids == byte_ids(PLAIN_PROMPT) + [ord("5") + 3, tokenizer.eos_token_id]
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc.labels[n_prompt:] == [ord("5") + 3, tokenizer.eos_token_id]
    assert enc.n_label_tokens == 2


def test_cutoff_can_leave_no_label_tokens(tokenizer):
    # 46 tokens into 3: the response's share, int(3 * 2 / 46), is 0
    enc = encode_sample(tokenizer, ROW, TokenizationSettings(cutoff_len=3))
    assert enc.input_ids == byte_ids("###") and enc.n_label_tokens == 0


def test_named_and_chat_templates(tokenizer, chat_template):
    [(prompt, response)] = render_turn_texts(tokenizer, Sample(turns=(("hi", "yo"),)), "llama3")
    assert prompt.startswith("<|start_header_id|>user") and response == "yo<|eot_id|>"
    assert render_turn_texts(tokenizer, ROW, "auto") == [(PLAIN_PROMPT, "5</s>")]
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        encode_sample(tokenizer, ROW, TokenizationSettings(template="nope"))
    with pytest.raises(ValueError, match="chat template"):
        encode_sample(tokenizer, ROW, TokenizationSettings(template="chat"))
    chat_template(
        "{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}"
    )
    turns = render_turn_texts(tokenizer, Sample(turns=(("hi", "yo"),)), "auto")
    assert turns == [("<u>hi<a>", "yo")]


def test_fingerprint_changes_with_any_token_or_label(tokenizer):
    settings = TokenizationSettings()
    base = encode_dataset(tokenizer, [ROW, ROW], settings)
    same = encode_dataset(tokenizer, [ROW, ROW], settings)
    assert fingerprint(base) == fingerprint(same)
    other = encode_dataset(tokenizer, [ROW, Sample(turns=(("Add 2 and 3", "6"),))], settings)
    assert fingerprint(base) != fingerprint(other)
    shorter = encode_dataset(tokenizer, [ROW, ROW], TokenizationSettings(cutoff_len=20))
    assert fingerprint(base) != fingerprint(shorter)
    with_system = encode_dataset(tokenizer, [ROW, Sample(ROW.turns, system="S")], settings)
    assert fingerprint(base) != fingerprint(with_system)


# ---- truncation ----
@pytest.mark.parametrize(
    ("source", "target", "cutoff", "expected"),
    [
        (10, 5, 50, (10, 5)),  # both fit
        (100, 10, 50, (40, 10)),  # short response (10 * 2 < 50): kept, the prompt gets 40
        (10, 100, 50, (10, 40)),  # short prompt (10 * 2 < 50): kept, the response gets 40
        (60, 40, 50, (30, 20)),  # both long: the response keeps its share, 50 * 40/100
        (70, 30, 50, (35, 15)),  # 50 * 30/100 = 15
        (80, 30, 50, (37, 13)),  # 50 * 30/110 = 13.6, rounded down
        (5, 5, 1, (1, 0)),  # one token left: it goes to the prompt
    ],
)
def test_infer_seqlen(source, target, cutoff, expected):
    assert infer_seqlen(source, target, cutoff) == expected


def test_turns_share_the_budget_in_order():
    turns = [([1, 2], [3]), ([4, 5], [6, 7])]
    whole = join_turns(turns, 10)
    assert whole.input_ids == [1, 2, 3, 4, 5, 6, 7]
    assert whole.labels == [IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX, 6, 7]
    # 1 token left for the second turn: infer_seqlen(2, 2, 1) gives it to the prompt
    cut = join_turns(turns, 4)
    assert cut.input_ids == [1, 2, 3, 4] and cut.labels == [IGNORE_INDEX, IGNORE_INDEX, 3, -100]
    # nothing left: the second turn is left out
    assert join_turns(turns, 3).input_ids == [1, 2, 3]


def test_a_long_prompt_keeps_part_of_its_response(tokenizer):
    sample = Sample(turns=(("x" * 300, "y" * 100),))
    enc = encode_sample(tokenizer, sample, TokenizationSettings(template="plain", cutoff_len=128))
    # prompt 17 + 300 + 16 = 333 tokens, response 100 + EOS = 101: the response keeps
    # int(128 * 101 / 434) = 29 tokens, the prompt the other 99
    assert len(enc.input_ids) == 128
    assert enc.labels[:99] == [IGNORE_INDEX] * 99
    assert enc.labels[99:] == enc.input_ids[99:] == [ord("y") + 3] * 29
    assert enc.input_ids[:17] == byte_ids("### Instruction:\n")


def test_an_alpaca_row_longer_than_cutoff_keeps_its_response(tokenizer):
    """Cut at the end, this row's prompt (359 tokens) filled all 256: no response token was
    left. Now the short response is kept whole and the prompt gives way."""
    instruction, text, answer = "Summarize the text below.", "word " * 60, "A short summary."
    sample = Sample(turns=((instruction + "\n" + text, answer),))  # as the loader joins them
    enc = encode_sample(tokenizer, sample, TokenizationSettings(template="plain", cutoff_len=256))
    assert len(byte_ids(PLAIN_PROMPT.replace("Add 2 and 3", instruction + "\n" + text))) == 359
    response = byte_ids(answer) + [tokenizer.eos_token_id]
    assert len(enc.input_ids) == 256
    assert enc.labels[-len(response) :] == enc.input_ids[-len(response) :] == response
    assert enc.n_label_tokens == len(response)


def test_a_later_turn_gets_what_is_left(tokenizer):
    settings = TokenizationSettings(template="plain", cutoff_len=44)
    enc = encode_sample(tokenizer, Sample(turns=(("U1", "A1"), ("U2", "A2"))), settings)
    # turn 1: 35 + 3 tokens; turn 2 (35 + 3) gets 6: 3 * 2 < 6 is false, 35 * 2 < 6 is false,
    # int(6 * 3 / 38) = 0: six prompt tokens and no response
    assert enc.input_ids[38:] == byte_ids("### In")
    assert labelled_runs(enc) == [byte_ids("A1") + [tokenizer.eos_token_id]]


# ---- labels: the assistant turns, as each template ends them ----
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_labels_cover_exactly_the_assistant_turns(tokenizer, name):
    enc = encode_sample(tokenizer, TWO_TURNS, TokenizationSettings(template=name))
    assert tokenizer.decode(enc.input_ids) == EXPECTED[name].replace("<s>", "")  # ByT5: no BOS
    lead = " " if name == "mistral" else ""
    expected = [lead + "A1" + TURN_END[name], lead + "A2" + TURN_END[name]]
    assert [tokenizer.decode(run) for run in labelled_runs(enc)] == expected
    labelled = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    assert all(enc.labels[i] == enc.input_ids[i] for i in labelled)


def test_llama3_ends_each_assistant_turn_with_the_eot_id_token(char_tokenizer):
    enc = encode_sample(char_tokenizer, TWO_TURNS, TokenizationSettings(template="llama3"))
    eot = char_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    chars = char_tokenizer.convert_tokens_to_ids
    assert labelled_runs(enc) == [[chars("A"), chars("1"), eot], [chars("A"), chars("2"), eot]]
    assert enc.input_ids[0] == char_tokenizer.bos_token_id
    assert enc.input_ids.count(eot) == 5  # system, two user and two assistant turns
    assert enc.input_ids.count(char_tokenizer.eos_token_id) == 0


def test_template_markers_the_tokenizer_lacks_are_text(char_tokenizer):
    enc = encode_sample(char_tokenizer, TWO_TURNS, TokenizationSettings(template="chatml"))
    first = labelled_runs(enc)[0]
    assert char_tokenizer.convert_ids_to_tokens(first) == list("A1<|im_end|>\n")


# ---- the tokenizer's chat template ----
def test_chat_template_turns_are_the_differences_of_renderings(tokenizer, chat_template):
    chat_template(TAGGED)
    assert render_turn_texts(tokenizer, TWO_TURNS, "chat") == [
        ("<system>S</system><user>U1</user><assistant>", "A1</assistant>"),
        ("<user>U2</user><assistant>", "A2</assistant>"),
    ]
    no_system = Sample(turns=TWO_TURNS.turns)
    assert render_turn_texts(tokenizer, no_system, "auto")[0][0] == "<user>U1</user><assistant>"
    enc = encode_sample(tokenizer, TWO_TURNS, TokenizationSettings(template="auto"))
    assert tokenizer.decode(enc.input_ids) == (
        "<system>S</system><user>U1</user><assistant>A1</assistant>"
        "<user>U2</user><assistant>A2</assistant>"
    )
    assert [tokenizer.decode(run) for run in labelled_runs(enc)] == [
        "A1</assistant>",
        "A2</assistant>",
    ]


def test_a_chat_template_that_rewrites_earlier_turns_is_refused(tokenizer, chat_template):
    # an empty thought block on the last assistant turn only, which the next turn takes away
    chat_template(
        "{% for m in messages %}{% if m['role'] == 'user' %}<u>{{ m['content'] }}"
        "{% else %}<a>{% if loop.last %}<think></think>{% endif %}{{ m['content'] }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    )
    one_turn = Sample(turns=(("U1", "A1"),))
    assert tokenizer.decode(encode_sample(tokenizer, one_turn, TokenizationSettings()).input_ids)
    with pytest.raises(ChatTemplateError, match="sample 1: .*turn 2.*built-in template"):
        encode_dataset(tokenizer, [one_turn, TWO_TURNS], TokenizationSettings(template="chat"))


def test_chat_template_gets_bos_once(char_tokenizer):
    """The tokenizer puts BOS before what it encodes: a template that does not write it gets
    it added; one that writes it keeps its own."""
    bos = char_tokenizer.bos_token_id
    try:
        char_tokenizer.chat_template = TAGGED
        ids = encode_sample(char_tokenizer, ROW, TokenizationSettings()).input_ids
        assert ids[:2] == [bos, char_tokenizer.convert_tokens_to_ids("<")]
        char_tokenizer.chat_template = "{{ bos_token }}" + TAGGED
        ids = encode_sample(char_tokenizer, ROW, TokenizationSettings()).input_ids
        assert ids[:2] == [bos, char_tokenizer.convert_tokens_to_ids("<")]
        assert ids.count(bos) == 1
    finally:
        char_tokenizer.chat_template = None
