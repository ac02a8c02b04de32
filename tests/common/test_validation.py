"""Validation errors as text, and the ZeroMQ endpoint check."""

import pytest
from pydantic import BaseModel, ValidationError

from common.validation import check_zmq_url, describe_errors


class _M(BaseModel):
    a: int
    b: list[int]


def test_each_error_is_one_line_naming_its_location():
    with pytest.raises(ValidationError) as info:
        _M.model_validate({"a": "x", "b": [1, "y"]})
    lines = describe_errors(info.value.errors())
    assert len(lines) == 2
    assert lines[0].startswith("a: ") and "integer" in lines[0]
    assert lines[1].startswith("b.1: ")


def test_an_error_about_the_whole_value_takes_the_default_location():
    assert describe_errors([{"loc": (), "msg": "bad"}], default="header") == ["header: bad"]


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:5555", "ipc:///tmp/s", "inproc://x"])
def test_zmq_endpoints_pass(url):
    assert check_zmq_url(url) == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:5555", "127.0.0.1:5555", ""])
def test_other_urls_are_refused_saying_what_to_use(url):
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        check_zmq_url(url)


def test_one_of_names_every_choice():
    from typing import Annotated

    from common.validation import one_of

    class Level(BaseModel):
        level: Annotated[str, one_of(("DEBUG", "INFO"), upper=True)]

    assert Level(level="info").level == "info"
    with pytest.raises(ValidationError, match="'loud' is not one of DEBUG, INFO"):
        Level(level="loud")


def test_problems_by_key_keeps_the_first_per_key_and_shows_the_refused_value():
    from pydantic import field_validator

    from common.validation import problems_by_key

    class Cfg(BaseModel):
        a: int
        b: list[int]
        c: str

        @field_validator("c")
        @classmethod
        def _c(cls, value: str) -> str:
            raise ValueError("c must name a file that exists")

    values = {"a": "x", "b": ["y", "z"], "c": "nope"}
    with pytest.raises(ValidationError) as info:
        Cfg.model_validate(values)
    problems = problems_by_key(info.value.errors(), values)
    assert set(problems) == {"a", "b", "c"}
    assert problems["a"].endswith("(got 'x')")
    assert problems["b"].count("(got") == 1  # the first of b's two errors
    assert problems["c"] == "c must name a file that exists"  # our own message as written


@pytest.mark.parametrize("run_id", ["run-1", "a", "Run_2.b", "x" * 128])
def test_run_ids_that_name_a_folder_safely(run_id):
    from common.validation import check_run_id

    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id", ["", "..", "a/b", "a\\b", ".hidden", "a..b", "x" * 129, "é", "a b", "-x"]
)
def test_run_ids_that_could_escape_or_hide_are_refused(run_id):
    from common.validation import check_run_id

    with pytest.raises(ValueError, match="not allowed"):
        check_run_id(run_id)


@pytest.mark.parametrize("text", ["/models/tiny", "a,b", "données/é", "C:\\data", "a b"])
def test_paths_and_names_without_control_characters_pass(text):
    from common.validation import check_no_control_chars

    assert check_no_control_chars(text) == text


@pytest.mark.parametrize(
    ("text", "shown"),
    [("/m\0x", r"'\\x00' at position 2"), ("a\tb", r"'\\t' at position 1"),
     ("\x7f", r"'\\x7f' at position 0"), ("x\x9f", r"'\\x9f' at position 1")],
)  # fmt: skip
def test_control_characters_are_refused_saying_which_and_where(text, shown):
    from common.validation import check_no_control_chars

    with pytest.raises(ValueError, match=shown):
        check_no_control_chars(text)
