"""What both services say about bad values: validation errors as text, endpoint checks."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field

ZMQ_SCHEMES = ("tcp://", "ipc://", "inproc://")


def error_location(loc: Iterable[Any], default: str = "") -> str:
    """`a.b.0` for pydantic's ('a', 'b', 0); default when the error is about the whole value."""
    return ".".join(str(part) for part in loc) or default


def describe_errors(errors: Iterable[Mapping[str, Any]], *, default: str = "value") -> list[str]:
    """One `location: message` line per pydantic error (ValidationError.errors())."""
    return [f"{error_location(err['loc'], default)}: {err['msg']}" for err in errors]


def check_zmq_url(value: str) -> str:
    """A ZeroMQ endpoint the services can bind or connect: tcp://HOST:PORT, ipc://PATH."""
    if not value.startswith(ZMQ_SCHEMES):
        raise ValueError(f"{value!r} is not a ZeroMQ endpoint: use tcp://HOST:PORT (or ipc://PATH)")
    return value


def one_of(choices: Sequence[str], *, upper: bool = False) -> AfterValidator:
    """A pydantic validator refusing a value outside choices (compared upper-cased if upper),
    naming them all."""

    def check(value: str) -> str:
        if (value.upper() if upper else value) not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


# A settings field holding a ZeroMQ endpoint.
ZmqUrl = Annotated[str, AfterValidator(check_zmq_url)]


def problems_by_key(
    errors: Iterable[Mapping[str, Any]], values: Mapping[str, Any]
) -> dict[str, str]:
    """The first problem of each top-level key of a config (ValidationError.errors() against
    the values given): our own checks' messages as written (they name what is wrong),
    pydantic's own with the value it refused."""
    problems: dict[str, str] = {}
    for err in errors:
        key = str(err["loc"][0]) if err["loc"] else "<config>"
        if err["type"] == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            message = f"{err['msg']} (got {values.get(key)!r})"
        problems.setdefault(key, message)
    return problems


RUN_ID_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(value: str) -> str:
    """A run id names folders and files of the scorer: letters, digits, `.`, `_` and `-`, at
    most 128, starting with a letter or digit, no `..`."""
    if not RUN_ID_CHARS.fullmatch(value) or ".." in value:
        raise ValueError(
            f"run id {value[:140]!r} is not allowed: use 1 to 128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit, without '..'"
        )
    return value


RunId = Annotated[str, AfterValidator(check_run_id)]


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's category Cc


def check_no_control_chars(value: str) -> str:
    """Text that names a path, a model or a dataset: no control character (NUL, a newline, an
    escape), which no such name holds and which the operating system refuses or misreads."""
    found = CONTROL_CHARS.search(value)
    if found is not None:
        raise ValueError(
            f"holds the control character {found.group()!r} at position {found.start()}; "
            "a path or a name holds none"
        )
    return value


# A path or a name that a peer sends: no control characters.
PlainText = Annotated[str, AfterValidator(check_no_control_chars)]

# A run's name, tags and metric keys, as MLflow bounds them: a name people read (any text but
# control characters); tag and metric keys of letters, digits, `_ . - / :` and spaces (never
# `=`, which a tag filter `key=value` splits on); tag values of any text.
MAX_RUN_NAME_CHARS = 256
MAX_TAGS = 64
MAX_KEY_CHARS = 250
MAX_TAG_VALUE_CHARS = 5000
KEY_CHARS = r"[A-Za-z0-9_.\-/: ]"  # one character of a key, as a regular expression
KEY_PATTERN = rf"^{KEY_CHARS}+$"
RunName = Annotated[PlainText, Field(min_length=1, max_length=MAX_RUN_NAME_CHARS)]
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=KEY_PATTERN)]
TagValue = Annotated[PlainText, Field(max_length=MAX_TAG_VALUE_CHARS)]
RunTags = Annotated[dict[Key, TagValue], Field(max_length=MAX_TAGS)]


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def is_loopback(host: str) -> bool:
    """Whether host names this machine only (an address a peer elsewhere cannot reach)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
