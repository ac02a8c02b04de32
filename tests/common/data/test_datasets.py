"""Reading a LLaMA-Factory data setup (dataset_info.json, alpaca, sharegpt) into Samples."""

import json
from pathlib import Path

import pytest

from common.data import datasets as datasets_module
from common.data.datasets import (
    DEFAULT_DATASET_DIR,
    MAX_FIELD_NAME,
    MAX_FIELD_TEXT,
    MAX_FIELDS,
    DatasetError,
    DatasetSpec,
    absolute_spec,
    files,
    load_rows,
    load_samples,
    split_validation,
    training_fields,
    training_rows,
    validation_count,
)
from common.data.samples import Sample
from delta_loss_devtools.demo_data import make_samples as make_demo_rows

SAMPLE = {"instruction": "Add 2 and 3", "input": "", "output": "5"}


def write(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(*pairs: tuple[str, str]) -> list[dict]:
    return [{"instruction": q, "input": "", "output": a} for q, a in pairs]


def one(user: str, assistant: str, system: str = "") -> Sample:
    return Sample(((user, assistant),), system)


def info(tmp_path: Path, entries: dict) -> Path:
    write(tmp_path / "dataset_info.json", entries)
    return tmp_path


def load(names: str, dataset_dir: Path | None = None, max_samples: int | None = None):
    directory = None if dataset_dir is None else str(dataset_dir)
    return load_samples(DatasetSpec(names, directory, max_samples))


def refusal(names: str, dataset_dir: Path | None = None, max_samples: int | None = None) -> str:
    with pytest.raises(DatasetError) as caught:
        load(names, dataset_dir, max_samples)
    return str(caught.value)


def conversation(*turns: tuple[str, str], system: str | None = None, key="conversations"):
    messages = [] if system is None else [{"from": "system", "value": system}]
    messages += [{"from": role, "value": text} for role, text in turns]
    return {key: messages}


# ---- paths and the comma list ----


def test_datasets_by_path_jsonl_and_dataset_info(tmp_path):
    # moved from test_tokenization: a path, a name for a JSON-lines file, a missing name
    write(tmp_path / "a.json", [SAMPLE])
    write_lines(tmp_path / "b.jsonl", [SAMPLE, SAMPLE])
    info(tmp_path, {"demo": {"file_name": "b.jsonl"}})
    assert load(str(tmp_path / "a.json")) == [one("Add 2 and 3", "5")]
    assert len(load("demo", tmp_path)) == 2
    message = refusal("missing", tmp_path)
    assert "dataset 'missing' is not in" in message and "dataset_info.json" in message
    write(tmp_path / "bad.json", [{"input": "x"}])
    message = refusal(str(tmp_path / "bad.json"))
    assert f"{tmp_path / 'bad.json'} row 0: it has no 'instruction' column" in message


def test_comma_list_concatenates_names_and_paths_in_order(tmp_path):
    write(tmp_path / "a.json", rows(("a1", "1"), ("a2", "2")))
    write(tmp_path / "b.json", rows(("b1", "1")))
    info(tmp_path, {"a": {"file_name": "a.json"}})
    write(tmp_path / "c.json", rows(("c1", "1")))
    got = load(f" {tmp_path / 'c.json'} , a,b.json", tmp_path)
    assert [s.turns[0][0] for s in got] == ["c1", "a1", "a2", "b1"]


def test_empty_and_repeated_items_are_refused(tmp_path):
    write(tmp_path / "a.json", rows(("a", "1")))
    assert "has an empty item" in refusal("a.json,,a.json", tmp_path)
    message = refusal("a.json, a.json", tmp_path)
    assert "lists a.json more than once" in message and "list each dataset once" in message


def test_one_file_under_two_spellings_or_names_is_refused_before_any_row_is_read(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.json", rows(("a", "1")))
    (tmp_path / "link.json").symlink_to(tmp_path / "a.json")
    info(tmp_path, {"alias": {"file_name": "./a.json"}})
    reads = []
    monkeypatch.setattr(datasets_module, "read_rows", lambda path: reads.append(path) or [])
    spellings = [f"{tmp_path}//a.json", "./a.json", "link.json", "alias"]
    for other in spellings:
        message = refusal(f"a.json,{other}", tmp_path)
        assert f"'a.json' and '{other}' both read {tmp_path / 'a.json'}" in message
        assert "list each dataset once" in message
    assert reads == []
    # a folder holding the file and a link to it reads it twice: refused as well
    (tmp_path / "folder").mkdir()
    write(tmp_path / "folder" / "a.json", rows(("a", "1")))
    (tmp_path / "folder" / "b.json").symlink_to(tmp_path / "folder" / "a.json")
    info(tmp_path, {"linked": {"file_name": "folder"}})
    message = refusal("linked", tmp_path)
    assert f"dataset item 'linked' reads {tmp_path / 'folder' / 'a.json'}" in message


def test_a_bare_path_needs_no_dataset_info(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "here.json", rows(("q", "a")))
    assert not (tmp_path / DEFAULT_DATASET_DIR).exists()
    assert load("here.json") == [one("q", "a")]


def test_a_relative_path_is_tried_in_dataset_dir_after_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "d" / "x.json", rows(("in d", "a")))
    assert load("x.json", tmp_path / "d") == [one("in d", "a")]
    write(tmp_path / "x.json", rows(("in cwd", "a")))
    assert load("x.json", tmp_path / "d") == [one("in cwd", "a")]
    message = refusal("nope.jsonl", tmp_path / "d")
    assert "dataset file nope.jsonl does not exist" in message
    assert str(tmp_path / "d" / "nope.jsonl") in message


def test_default_dataset_dir_is_data_in_the_working_directory(tmp_path, monkeypatch):
    assert DEFAULT_DATASET_DIR == "data"
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "data" / "x.json", rows(("q", "a")))
    info(tmp_path / "data", {"x": {"file_name": "x.json"}})
    assert load("x") == [one("q", "a")]


def test_a_name_without_dataset_info_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = refusal("alpaca_en_demo")
    assert "dataset 'alpaca_en_demo' is not the path of a .json, .jsonl, .csv," in message
    assert str(Path("data") / "dataset_info.json") in message
    assert "set dataset_dir" in message


def test_unknown_name_suggests_close_ones(tmp_path):
    info(tmp_path, {"alpaca_en_demo": {"file_name": "a.json"}, "other": {"file_name": "o"}})
    message = refusal("alpaca_en_dmo", tmp_path)
    assert "(2 entries)" in message and "did you mean alpaca_en_demo?" in message


def test_broken_dataset_info_is_named(tmp_path):
    (tmp_path / "dataset_info.json").write_text("{oops")
    assert f"{tmp_path / 'dataset_info.json'} is not valid JSON" in refusal("x", tmp_path)
    write(tmp_path / "dataset_info.json", ["x"])
    assert "must hold a JSON object of dataset entries" in refusal("x", tmp_path)
    write(tmp_path / "dataset_info.json", {"x": "x.json"})
    assert "dataset 'x' in" in refusal("x", tmp_path)
    assert "must be a JSON object with a file_name" in refusal("x", tmp_path)


# ---- file_name ----


def test_file_name_folder_reads_its_json_files_in_name_order(tmp_path):
    folder = tmp_path / "parts"
    write(folder / "b.json", rows(("b", "1")))
    write_lines(folder / "a.jsonl", rows(("a", "1")))
    write(folder / "c.json", rows(("c", "1")))
    (folder / "notes.txt").write_text("not data")
    info(tmp_path, {"p": {"file_name": "parts"}})
    assert [s.turns[0][0] for s in load("p", tmp_path)] == ["a", "b", "c"]
    spec = DatasetSpec("p", str(tmp_path))
    assert files(spec) == [folder / "a.jsonl", folder / "b.json", folder / "c.json"]


def test_file_name_problems(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.txt").write_text("instruction,output\n")
    info(
        tmp_path,
        {
            "none": {"formatting": "alpaca"},
            "gone": {"file_name": "gone.json"},
            "empty": {"file_name": "empty"},
            "txt": {"file_name": "t.txt"},
        },
    )
    assert "dataset 'none' in" in refusal("none", tmp_path)
    assert "has no file_name" in refusal("none", tmp_path)
    message = refusal("gone", tmp_path)
    assert f"file_name gone.json, but {tmp_path / 'gone.json'} does not exist" in message
    assert "holds no .json, .jsonl, .csv, .parquet or .arrow file" in refusal("empty", tmp_path)
    assert "is a .txt file, not a kind this tool reads" in refusal("txt", tmp_path)


def test_files_lists_every_data_file_resolved_and_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "d" / "a.json", rows(("a", "1")))
    write(tmp_path / "d" / "b" / "b1.json", rows(("b", "1")))
    info(tmp_path / "d", {"a": {"file_name": "a.json"}, "b": {"file_name": "b"}})
    got = files(DatasetSpec("a,d/b/../b/b1.json", "d"))
    assert got == [(tmp_path / "d" / p).resolve() for p in ("a.json", "b/b1.json")]
    assert all(path.is_absolute() for path in got)
    assert len(load_samples(DatasetSpec("a,d/b/../b/b1.json", "d"))) == 2


def test_absolute_spec_reads_the_same_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "x.json", rows(("x", "1")))
    write(tmp_path / "data" / "n.json", rows(("n", "1")))
    info(tmp_path / "data", {"n": {"file_name": "n.json"}})
    spec = absolute_spec(DatasetSpec("n,x.json", max_samples=5))
    assert spec == DatasetSpec(f"n,{tmp_path / 'x.json'}", str(tmp_path / "data"), 5)
    monkeypatch.chdir(tmp_path / "data")
    assert [s.turns[0][0] for s in load_samples(spec)] == ["n", "x"]


# ---- hub entries ----


@pytest.mark.parametrize(
    "key", ["hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"]
)
def test_hub_entries_are_refused_with_how_to_use_a_local_copy(tmp_path, key):
    info(tmp_path, {"hub": {key: "org/data"}, "both": {key: "org/data", "file_name": "l.json"}})
    message = refusal("hub", tmp_path)
    assert f"dataset 'hub' in {tmp_path / 'dataset_info.json'} is a hub dataset" in message
    assert f"({key}: org/data)" in message and "reads local files only" in message
    assert "download the data, then give the entry a file_name" in message
    assert f"remove {key} from the entry so that its file_name is read" in refusal("both", tmp_path)


def test_online_dataset_dir_is_refused(tmp_path):
    for directory in ("ONLINE", "REMOTE:org/data"):
        message = refusal("x", Path(directory))
        assert f"dataset_dir '{directory}' means datasets from a hub" in message


def test_entries_for_other_kinds_of_training_are_refused(tmp_path):
    info(
        tmp_path,
        {
            "dpo": {"file_name": "a.json", "ranking": True},
            "sampled": {"file_name": "a.json", "num_samples": 10},
            "tools": {"file_name": "a.json", "formatting": "sharegpt", "columns": {"tools": "t"}},
            "mm": {"file_name": "a.json", "columns": {"images": "images"}},
            "oai": {"file_name": "a.json", "formatting": "openai"},
        },
    )
    assert "preference data (ranking: true)" in refusal("dpo", tmp_path)
    assert "num_samples" in refusal("sampled", tmp_path)
    assert "set max_samples" in refusal("sampled", tmp_path)
    assert "tools (tool descriptions)" in refusal("tools", tmp_path)
    assert "images (images)" in refusal("mm", tmp_path)
    message = refusal("oai", tmp_path)
    assert "formatting 'openai'" in message and "sharegpt with tags role_tag 'role'" in message


# ---- alpaca ----


def test_alpaca_joins_prompt_and_query_with_a_newline(tmp_path):
    data = [
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say hi", "output": "hi"},
        {"instruction": "", "input": "only input", "output": "x"},
    ]
    write(tmp_path / "a.json", data)
    assert load(str(tmp_path / "a.json")) == [
        one("Translate\nbonjour", "hello"),
        one("Say hi", "hi"),
        one("Say hi", "hi"),
        one("only input", "x"),
    ]


def test_alpaca_history_and_system_under_the_default_names(tmp_path):
    row = {
        "instruction": "and 3?",
        "output": "9",
        "history": [["square of 2?", "4"], ["of 4?", "16"]],
        "system": "You do sums.",
    }
    write(tmp_path / "a.json", [row])
    assert load(str(tmp_path / "a.json")) == [
        Sample((("square of 2?", "4"), ("of 4?", "16"), ("and 3?", "9")), "You do sums.")
    ]


def test_alpaca_columns_rename_and_unnamed_optional_columns_are_not_read(tmp_path):
    row = {"q": "Q", "ctx": "C", "a": "A", "h": [["u", "v"]], "sys": "S", "input": "ignored"}
    write(tmp_path / "a.json", [row])
    columns = {"prompt": "q", "query": "ctx", "response": "a", "history": "h", "system": "sys"}
    info(
        tmp_path,
        {
            "all": {"file_name": "a.json", "columns": columns},
            # as LLaMA-Factory: once columns are given, query/history/system need naming
            "some": {"file_name": "a.json", "columns": {"prompt": "q", "response": "a"}},
        },
    )
    assert load("all", tmp_path) == [Sample((("u", "v"), ("Q\nC", "A")), "S")]
    assert load("some", tmp_path) == [one("Q", "A")]


def test_alpaca_row_without_prompt_or_response_names_file_row_and_columns(tmp_path):
    data = [SAMPLE, {"instruction": "no answer"}, SAMPLE, {"output": "no question"}]
    path = write(tmp_path / "a.json", data)
    info(tmp_path, {"x": {"file_name": "a.json", "columns": {"prompt": "q", "response": "r"}}})
    message = refusal(str(path))
    assert f"file {path}: 2 rows cannot be read as alpaca samples" in message
    assert f"the first at {path} row 1: it has no 'output' column" in message
    assert "columns prompt='instruction', query='input', response='output'" in message
    assert message.endswith("fix or remove these rows")
    message = refusal("x", tmp_path)
    assert "dataset 'x': 4 rows" in message and f"{path} row 0: it has no 'q' column" in message
    assert "columns prompt='q', response='r'." in message


def test_alpaca_values_must_be_text(tmp_path):
    path = tmp_path / "a.json"
    write(path, [{"instruction": "2+3", "output": 5}])
    assert "column 'output' holds a number, not text" in refusal(str(path))
    write(path, [{"instruction": "q", "output": "a", "history": "none"}])
    assert "column 'history' must be a list of [user, assistant] text pairs" in refusal(str(path))
    write(path, [{"instruction": "q", "output": "a", "history": [["only user"]]}])
    assert "a list of something else" in refusal(str(path))
    write(path, [["q", "a"]])
    assert f"{path} row 0: a row must be a JSON object, this one is a list" in refusal(str(path))


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(SAMPLE) + "\n\n" + json.dumps({"instruction": "x"}) + "\n")
    assert f"the first at {path} line 3: it has no 'output' column" in refusal(str(path))
    path.write_text(json.dumps(SAMPLE) + "\n{broken\n")
    assert f"{path} line 2 is not valid JSON" in refusal(str(path))
    (tmp_path / "b.json").write_text("[{broken")
    assert f"{tmp_path / 'b.json'} is not valid JSON" in refusal(str(tmp_path / "b.json"))


def test_an_empty_dataset_is_refused(tmp_path):
    write(tmp_path / "a.json", [])
    assert f"file {tmp_path / 'a.json'} holds no rows" in refusal(str(tmp_path / "a.json"))


# ---- sharegpt ----


def sharegpt(tmp_path: Path, data: list, entry: dict | None = None) -> Path:
    write(tmp_path / "c.json", data)
    info(tmp_path, {"chat": {"file_name": "c.json", "formatting": "sharegpt", **(entry or {})}})
    return tmp_path / "c.json"


def test_sharegpt_default_tags_and_a_leading_system_message(tmp_path):
    data = [
        conversation(("human", "hi"), ("gpt", "hello"), ("human", "2+2?"), ("gpt", "4")),
        conversation(("human", "q"), ("gpt", "a"), system="Be brief."),
        {**conversation(("human", "q"), ("gpt", "a")), "system": "From the column."},
    ]
    sharegpt(tmp_path, data)
    assert load("chat", tmp_path) == [
        Sample((("hi", "hello"), ("2+2?", "4"))),
        one("q", "a", "Be brief."),
        one("q", "a", "From the column."),
    ]


def test_openai_style_messages_through_tags(tmp_path):
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user"}
    tags |= {"assistant_tag": "assistant", "system_tag": "system"}
    sharegpt(
        tmp_path, [{"messages": messages}], {"columns": {"messages": "messages"}, "tags": tags}
    )
    assert load("chat", tmp_path) == [one("u", "a", "S")]


def test_sharegpt_tags_without_system_tag_have_no_system_role(tmp_path):
    # as LLaMA-Factory's mllm_demo entry: tags given, system_tag not among them
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user"}
    sharegpt(
        tmp_path, [{"messages": messages}], {"columns": {"messages": "messages"}, "tags": tags}
    )
    assert "message 0 has role 'system' where the user ('user') belongs" in refusal(
        "chat", tmp_path
    )
    # nor an observation role: such a message is out of place, not tool use
    messages = [{"role": "user", "content": "u"}, {"role": "observation", "content": "{}"}]
    sharegpt(
        tmp_path, [{"messages": messages}], {"columns": {"messages": "messages"}, "tags": tags}
    )
    message = refusal("chat", tmp_path)
    assert "message 1 has role 'observation' where the assistant ('gpt') belongs" in message


def test_sharegpt_turns_must_alternate_and_end_with_the_assistant(tmp_path):
    good = conversation(("human", "q"), ("gpt", "a"))
    data = [
        good,
        conversation(("human", "q"), ("human", "again"), ("gpt", "a")),
        good,
        conversation(("human", "q"), ("gpt", "a"), ("human", "left hanging")),
        conversation(("gpt", "a"), ("human", "q")),
    ]
    path = sharegpt(tmp_path, data)
    message = refusal("chat", tmp_path)
    assert "dataset 'chat': 3 rows cannot be read as sharegpt samples" in message
    assert f"the first at {path} row 1: message 1 has role 'human' where the assistant " in message
    assert "must alternate 'human' and 'gpt', starting with 'human'" in message
    assert "columns messages='conversations', system='system' and tags role_tag='from'" in message
    assert "or correct the entry's columns and tags" in message
    data[1] = data[4] = good
    sharegpt(tmp_path, data)
    message = refusal("chat", tmp_path)
    assert f"1 row cannot be read as sharegpt samples, the first at {path} row 3" in message
    assert "ends on a user turn (3 user and assistant messages)" in message


def test_sharegpt_tool_use_is_refused_by_name(tmp_path):
    for role in ("observation", "function_call"):
        turns = [("human", "weather?"), (role, "{}"), ("human", "x"), ("gpt", "sunny")]
        if role == "observation":
            turns = [("human", "weather?"), ("gpt", "call"), (role, "{}"), ("gpt", "sunny")]
        sharegpt(tmp_path, [conversation(*turns)])
        message = refusal("chat", tmp_path)
        assert f"has role '{role}': tool-use data (function calls and observations)" in message


def test_sharegpt_malformed_rows(tmp_path):
    cases = {
        "it has no 'conversations' column": {"messages": []},
        "column 'conversations' holds text, not a list": {"conversations": "hi"},
        "the conversation has no user or assistant message": conversation(system="S"),
        "message 0 is a list, not a JSON object": {"conversations": [["human", "q"]]},
        "message 0 has no 'value' key": {"conversations": [{"from": "human", "text": "q"}]},
        "message 0: 'from' and 'value' must be text": {
            "conversations": [{"from": "human", "value": None}]
        },
    }
    for expected, row in cases.items():
        sharegpt(tmp_path, [row])
        assert expected in refusal("chat", tmp_path)


# ---- max_samples ----


def test_max_samples_cuts_each_dataset_before_they_are_joined(tmp_path):
    write(tmp_path / "a.json", rows(("a1", "1"), ("a2", "2"), ("a3", "3")))
    write(tmp_path / "b.json", rows(("b1", "1"), ("b2", "2")))
    got = load("a.json,b.json", tmp_path, max_samples=2)
    assert [s.turns[0][0] for s in got] == ["a1", "a2", "b1", "b2"]
    assert len(load("a.json,b.json", tmp_path, max_samples=1)) == 2
    assert len(load("a.json,b.json", tmp_path, max_samples=100)) == 5


def test_max_samples_counts_across_a_folder_and_leaves_later_rows_unread(tmp_path):
    write(tmp_path / "f" / "1.json", rows(("x", "1")))
    write(tmp_path / "f" / "2.json", [*rows(("y", "2")), {"instruction": "broken"}])
    info(tmp_path, {"f": {"file_name": "f"}})
    assert [s.turns[0][0] for s in load("f", tmp_path, max_samples=2)] == ["x", "y"]
    assert "1 row cannot be read" in refusal("f", tmp_path, max_samples=3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_samples_must_be_a_positive_whole_number(bad):
    with pytest.raises(DatasetError, match="max_samples must be a whole number of at least 1"):
        DatasetSpec("a.json", max_samples=bad)


# ---- val_size ----


def test_validation_count_fraction_and_count():
    assert validation_count(10, 0.0) == 0
    assert validation_count(10, 1e-7) == 0  # LLaMA-Factory's "no split" threshold
    assert validation_count(10, 0.25) == 3  # rounded up, as datasets' train_test_split
    assert validation_count(30, 0.1) == 3  # not 4: no float error
    assert validation_count(10, 1) == 1
    assert validation_count(10, 4) == 4
    assert validation_count(10, 4.7) == 4  # LLaMA-Factory's int(val_size)


@pytest.mark.parametrize(
    ("n", "val_size", "words"),
    [
        (10, 10, "takes 10 of the 10 samples"),
        (10, 0.95, "takes 10 of the 10 samples"),
        (1, 0.5, "takes 1 of the 1 samples"),
    ],
)
def test_val_size_leaving_no_training_sample_is_refused(n, val_size, words):
    with pytest.raises(DatasetError, match=words) as caught:
        split_validation(list(range(n)), val_size, seed=42)
    assert "leaving none to train on" in str(caught.value)


def test_val_size_needs_samples_to_split():
    with pytest.raises(DatasetError, match="asks to split a dataset of no samples"):
        split_validation([], 0.5, seed=0)
    assert split_validation([], 0, seed=0) == ([], [])


@pytest.mark.parametrize("bad", [-0.1, "0.1", True, None])
def test_val_size_must_be_a_non_negative_number(bad):
    with pytest.raises(DatasetError, match="val_size must be a fraction below 1"):
        split_validation([1, 2, 3], bad, seed=0)


def test_split_validation_is_seeded_and_keeps_order():
    samples = [f"s{i}" for i in range(10)]
    # numpy's RandomState(0).permutation(10) begins 2, 8, 4: fixed across versions
    train, validation = split_validation(samples, 3, seed=0)
    assert validation == ["s2", "s4", "s8"]
    assert train == ["s0", "s1", "s3", "s5", "s6", "s7", "s9"]
    assert split_validation(samples, 3, seed=0) == (train, validation)
    assert split_validation(samples, 3, seed=1)[1] == ["s2", "s6", "s9"]
    train, validation = split_validation(samples, 0.2, seed=42)
    assert validation == ["s1", "s8"] and len(train) == 8
    assert split_validation(samples, 0, seed=0) == (samples, [])
    with pytest.raises(DatasetError, match="seed must be within"):
        split_validation(samples, 3, seed=-1)


# ---- the rows' other columns ----


def test_rows_carry_their_other_scalar_columns(tmp_path):
    row = {
        **SAMPLE, "system": "S", "history": [["hi", "hello"]],
        "group": "add", "score": 0.5, "count": 3, "ok": True, "none": None, "nan": float("nan"),
        "tags": ["a"], "meta": {"k": 1}, "note": "x" * 300, "n" * (MAX_FIELD_NAME + 1): "long",
    }  # fmt: skip
    path = tmp_path / "a.json"
    path.write_text(json.dumps([row]), encoding="utf-8")  # NaN, as Python's json writes it
    (read,) = load_rows(DatasetSpec(str(path)))
    assert read.sample == Sample((("hi", "hello"), ("Add 2 and 3", "5")), "S")
    assert read.fields == {
        "group": "add", "score": 0.5, "count": 3, "ok": True, "none": None, "nan": None,
        "note": "x" * (MAX_FIELD_TEXT - 1) + "…",
    }  # fmt: skip
    assert list(read.fields) == ["group", "score", "count", "ok", "none", "nan", "note"]


def test_at_most_max_fields_columns_are_kept(tmp_path):
    many = {**SAMPLE, **{f"c{i}": i for i in range(MAX_FIELDS + 5)}}
    (read,) = load_rows(DatasetSpec(str(write(tmp_path / "a.json", [many]))))
    assert read.fields == {f"c{i}": i for i in range(MAX_FIELDS)}


def test_columns_an_entry_maps_are_text_and_the_others_fields(tmp_path):
    # alpaca with columns: the prompt is "q", "instruction" an ordinary column
    write(tmp_path / "a.json", [{"q": "Add 2 and 3", "a": "5", "instruction": "x", "g": 1}])
    entry = {"file_name": "a.json", "columns": {"prompt": "q", "response": "a"}}
    # sharegpt: the messages and system columns are the text
    convo = {**conversation(("human", "q"), ("gpt", "a")), "system": "S", "source": "web"}
    write(tmp_path / "c.json", [convo])
    chat = {"file_name": "c.json", "formatting": "sharegpt"}
    info(tmp_path, {"alp": entry, "chat": chat})
    rows = load_rows(DatasetSpec("alp,chat", str(tmp_path)))
    assert [row.fields for row in rows] == [{"instruction": "x", "g": 1}, {"source": "web"}]
    assert [row.sample for row in rows] == [one("Add 2 and 3", "5"), one("q", "a", "S")]


def test_training_fields_are_aligned_with_the_training_samples(tmp_path):
    data = [{**SAMPLE, "output": str(i), "i": i} for i in range(12)]
    write(tmp_path / "a.json", data)
    write(tmp_path / "b.json", [{**SAMPLE, "output": "b", "i": 100}])
    spec = DatasetSpec(f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", max_samples=10)
    samples = split_validation(load_samples(spec), 0.3, 5)[0]
    fields = training_fields(spec, 0.3, 5)
    assert [f["i"] for f in fields] == [
        int(s.response) if s.response != "b" else 100 for s in samples
    ]
    assert len(fields) == 7  # 11 rows (10 cut from a.json, b.json's 1), 4 held out
    assert [row.sample for row in training_rows(spec, 0.3, 5)] == samples
    assert [f["i"] for f in training_fields(spec)] == [*range(10), 100]  # no split


def test_other_columns_leave_the_samples_as_they_were(tmp_path):
    # the demo's rows carry their group: the samples (all tokenization sees) are the same
    rows = make_demo_rows(40)
    with_group = write(tmp_path / "with.json", rows)
    without = write(tmp_path / "without.json", [
        {k: v for k, v in row.items() if k != "group"} for row in rows
    ])  # fmt: skip
    assert load(str(with_group)) == load(str(without))
    assert [f["group"] for f in training_fields(DatasetSpec(str(with_group)))] == [
        row["group"] for row in rows
    ]
