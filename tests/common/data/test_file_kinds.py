"""Data files of every kind read (json, jsonl, csv, parquet, arrow) give the same samples; the
kinds not read, folders of mixed kinds and sharegpt in csv are refused by name; the `datasets`
loader reads local files only, downloads nothing and leaves nothing behind."""

import csv
import json
import socket
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from common.data.datasets import (
    DatasetError,
    DatasetSpec,
    files,
    load_rows,
    load_samples,
)
from common.data.samples import Sample
from common.data.tokenization import TokenizationSettings, encode_dataset

KINDS = ("json", "jsonl", "csv", "parquet", "arrow")
TABLE_KINDS = ("csv", "parquet", "arrow")
ALPACA = [
    {"instruction": "Add 2 and 3", "input": "", "output": "5", "group": "math"},
    {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "Be brief."},
    {"instruction": "Name a colour", "output": "red", "group": "words"},
]
ALPACA_SAMPLES = [
    Sample((("Add 2 and 3", "5"),)),
    Sample((("Translate\nbonjour", "hello"),), "Be brief."),
    Sample((("Name a colour", "red"),)),
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "yo"},
            {"from": "human", "value": "bye"},
            {"from": "gpt", "value": "ciao"},
        ]
    },
    {
        "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
        "system": "Answer with a number.",
    },
]
SHAREGPT_SAMPLES = [
    Sample((("hi", "yo"), ("bye", "ciao")), "You are terse."),
    Sample((("2+2?", "4"),), "Answer with a number."),
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """rows as a file of the kind its suffix names (a missing key: a null or empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.suffix[1:]
    names = list(dict.fromkeys(key for row in rows for key in row))
    full = [{name: row.get(name) for name in names} for row in rows]  # every column in each
    if kind == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif kind == "csv":
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, names, restval="")
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(full), path)
    else:  # arrow: the stream format `datasets` saves its shards in
        table = pa.Table.from_pylist(full)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as out:
            out.write_table(table)
    return path


def info(folder: Path, entries: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_info.json").write_text(json.dumps(entries), encoding="utf-8")
    return folder


def load(names: str, folder: Path | None = None, max_samples: int | None = None):
    return load_samples(DatasetSpec(names, None if folder is None else str(folder), max_samples))


def refusal(names: str, folder: Path | None = None) -> str:
    with pytest.raises(DatasetError) as caught:
        load(names, folder)
    return str(caught.value)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No hub and no network: a connection attempt fails the test. The loader's temporary
    folders go under tmp_path/scratch, which must be empty again after each test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield
    assert list(scratch.iterdir()) == []


# ---- the same rows in every kind ----


@pytest.mark.parametrize("kind", KINDS)
def test_alpaca_rows_read_the_same_from_every_kind(tmp_path, kind):
    path = write_rows(tmp_path / f"train.{kind}", ALPACA)
    assert load(str(path)) == ALPACA_SAMPLES
    info(tmp_path, {"named": {"file_name": path.name, "formatting": "alpaca"}})
    assert load("named", tmp_path) == ALPACA_SAMPLES
    fields = [row.fields for row in load_rows(DatasetSpec(str(path)))]
    assert fields == [{"group": "math"}, {}, {"group": "words"}]


@pytest.mark.parametrize("kind", ("json", "jsonl", "parquet", "arrow"))
def test_sharegpt_rows_read_the_same_from_every_kind_but_csv(tmp_path, kind):
    write_rows(tmp_path / f"chat.{kind}", SHAREGPT)
    info(tmp_path, {"chat": {"file_name": f"chat.{kind}", "formatting": "sharegpt"}})
    assert load("chat", tmp_path) == SHAREGPT_SAMPLES


def test_openai_style_messages_in_parquet(tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    write_rows(tmp_path / "m.parquet", [{"messages": messages}])
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user"}
    entry = {
        "file_name": "m.parquet",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {**tags, "assistant_tag": "assistant"},
    }
    info(tmp_path, {"m": entry})
    assert load("m", tmp_path) == [Sample((("hi", "yo"),))]


def test_sharegpt_in_csv_is_refused_by_name(tmp_path):
    (tmp_path / "chat.csv").write_text('conversations\n"[{""from"": ""human""}]"\n')
    info(tmp_path, {"chat": {"file_name": "chat.csv", "formatting": "sharegpt"}})
    message = refusal("chat", tmp_path)
    assert "dataset 'chat'" in message and "is sharegpt data in csv (chat.csv)" in message
    assert "a csv cell holds text, not the list of messages" in message
    assert ".json, .jsonl, .parquet or .arrow" in message


# ---- folders ----


def test_a_folder_of_parquet_shards_reads_in_name_order(tmp_path):
    shards = tmp_path / "shards"
    write_rows(shards / "part-2.parquet", [ALPACA[2]])
    write_rows(shards / "part-0.parquet", [ALPACA[0]])
    write_rows(shards / "part-1.parquet", [ALPACA[1]])
    (shards / "README.md").write_text("left alone")
    info(tmp_path, {"shards": {"file_name": "shards"}})
    assert load("shards", tmp_path) == ALPACA_SAMPLES
    assert load("shards", tmp_path, max_samples=2) == ALPACA_SAMPLES[:2]
    names = [path.name for path in files(DatasetSpec("shards", str(tmp_path)))]
    assert names == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]


def test_a_folder_of_mixed_kinds_is_refused_naming_them(tmp_path):
    write_rows(tmp_path / "mixed" / "a.csv", ALPACA[:1])
    write_rows(tmp_path / "mixed" / "b.parquet", ALPACA[1:2])
    write_rows(tmp_path / "mixed" / "c.json", ALPACA[2:])
    info(tmp_path, {"mixed": {"file_name": "mixed"}})
    message = refusal("mixed", tmp_path)
    assert "holds data files of 3 kinds (csv: a.csv; parquet: b.parquet; json: c.json)" in message
    assert "a folder is read as one kind (.json and .jsonl are one)" in message
    assert "move the files of the other kinds to a folder of their own" in message


def test_a_folder_of_no_data_file_names_what_it_holds(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("plain text")
    info(tmp_path, {"texts": {"file_name": "texts"}})
    message = refusal("texts", tmp_path)
    assert "holds no .json, .jsonl, .csv, .parquet or .arrow file (it holds a.txt)" in message


# ---- kinds not read ----


def test_txt_is_refused_with_the_kinds_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("plain text\n")
    info(tmp_path, {"notes": {"file_name": "notes.txt"}})
    message = refusal("notes", tmp_path)
    assert f"{tmp_path / 'notes.txt'} is a .txt file, not a kind this tool reads" in message
    assert "(.json, .jsonl, .csv, .parquet or .arrow)" in message
    message = refusal("notes.txt")  # a bare .txt item is no path: a name, with no entry
    assert "'notes.txt' is not the path of a .json, .jsonl, .csv, .parquet or .arrow" in message


@pytest.mark.parametrize("kind", TABLE_KINDS)
def test_a_bare_path_of_each_table_kind_is_a_path(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "d" / f"t.{kind}", ALPACA)
    assert load(f"t.{kind}", tmp_path / "d") == ALPACA_SAMPLES  # from dataset_dir
    message = refusal(f"gone.{kind}")
    assert f"dataset file gone.{kind} does not exist" in message


# ---- values ----


def test_an_empty_csv_cell_is_a_missing_value(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("instruction,input,output,system\nq,,a,\nq2,more,,S\n", encoding="utf-8")
    message = refusal(str(path))
    assert f"1 row cannot be read as alpaca samples, the first at {path} row 1" in message
    assert "it has no 'output' column" in message  # as a JSON row without the key
    assert "In a csv file an empty cell" in message
    path.write_text("instruction,input,output,system\nq,,a,\n", encoding="utf-8")
    assert load(str(path)) == [Sample((("q", "a"),))]


def test_numbers_in_a_text_column_are_refused_with_file_and_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("instruction,output\nAdd 2 and 3,5\nAdd 1 and 1,2\n", encoding="utf-8")
    message = refusal(str(path))
    assert f"2 rows cannot be read as alpaca samples, the first at {path} row 0" in message
    assert "column 'output' holds a number, not text" in message
    assert "a column whose cells are all numbers holds numbers" in message
    parquet = write_rows(tmp_path / "t.parquet", [{"instruction": "q", "output": 7}])
    message = refusal(str(parquet))
    assert f"the first at {parquet} row 0: column 'output' holds a number" in message
    assert "In a csv file" not in message


def test_files_that_are_not_of_their_kind_or_hold_no_row(tmp_path):
    (tmp_path / "header.csv").write_text("instruction,output\n")
    assert "holds no rows" in refusal(str(tmp_path / "header.csv"))
    (tmp_path / "broken.parquet").write_text("not parquet")
    message = refusal(str(tmp_path / "broken.parquet"))
    assert f"{tmp_path / 'broken.parquet'} cannot be read as a parquet file (" in message
    assert "check that it is one" in message


def test_a_file_name_with_pattern_characters_reads_that_file_alone(tmp_path):
    write_rows(tmp_path / "x1.parquet", [ALPACA[0]])
    write_rows(tmp_path / "x[1].parquet", [ALPACA[2]])
    write_rows(tmp_path / "x*.csv", [ALPACA[1]])
    assert load(str(tmp_path / "x[1].parquet")) == [ALPACA_SAMPLES[2]]
    assert load(str(tmp_path / "x*.csv")) == [ALPACA_SAMPLES[1]]


# ---- the guard, and the tokens ----


def test_the_guard_sees_every_file_and_folder(tmp_path):
    write_rows(tmp_path / "shards" / "a.arrow", ALPACA[:1])
    write_rows(tmp_path / "shards" / "b.arrow", ALPACA[1:])
    bare = write_rows(tmp_path / "t.csv", ALPACA)
    info(tmp_path, {"shards": {"file_name": "shards"}})
    seen: list[Path] = []
    spec = DatasetSpec(f"shards,{bare}", str(tmp_path))
    samples = load_samples(spec, guard=seen.append)
    assert samples == ALPACA_SAMPLES + ALPACA_SAMPLES
    resolved = {path.resolve() for path in seen}
    assert tmp_path / "dataset_info.json" in resolved
    assert {tmp_path / "shards", bare} <= resolved
    assert set(files(spec)) <= resolved


def test_a_parquet_dataset_encodes_to_the_tokens_of_the_same_rows_in_json(tmp_path, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for kind in ("json", "parquet"):
        write_rows(tmp_path / f"chat.{kind}", SHAREGPT)
        write_rows(tmp_path / f"alpaca.{kind}", ALPACA)
    info(
        tmp_path,
        {
            f"{name}_{kind}": {"file_name": f"{name}.{kind}", "formatting": formatting}
            for name, formatting in (("chat", "sharegpt"), ("alpaca", "alpaca"))
            for kind in ("json", "parquet")
        },
    )
    for template in ("auto", "llama3"):
        settings = TokenizationSettings(template=template)
        from_json = encode_dataset(tokenizer, load("alpaca_json,chat_json", tmp_path), settings)
        from_parquet = encode_dataset(
            tokenizer, load("alpaca_parquet,chat_parquet", tmp_path), settings
        )
        assert len(from_json) == 5 and all(sample.input_ids for sample in from_json)
        assert [(s.input_ids, s.labels) for s in from_parquet] == [
            (s.input_ids, s.labels) for s in from_json
        ]
