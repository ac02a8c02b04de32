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
