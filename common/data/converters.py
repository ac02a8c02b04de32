"""Rows into Samples, as LLaMA-Factory's data/converter.py: one function per `formatting`.

CONVERTERS maps each formatting to the function that turns a row of a Source into a Sample. A
new format is one function registered here and, under the same name, its columns class and
reader in dataset_info.COLUMNS_READERS. A row that cannot be a sample raises RowProblem, which
the reader collects and reports with the file and row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.data.dataset_info import AlpacaColumns, SharegptColumns, Source, Tags
from common.data.samples import Sample


class RowProblem(Exception):
    """Why one row is not a sample (collected, then reported with the file and row)."""


# A row of the source into its sample (raises RowProblem when it cannot be one).
Convert = Callable[[Any, Source], Sample]
CONVERTERS: dict[str, Convert] = {}


def register(formatting: str) -> Callable[[Convert], Convert]:
    """Register the decorated function as the converter of `formatting`."""

    def add(convert: Convert) -> Convert:
        CONVERTERS[formatting] = convert
        return convert

    return add


def converter(source: Source) -> Callable[[Any], Sample]:
    """The source's rows into samples, by its formatting."""
    convert = CONVERTERS[source.formatting]
    return lambda row: convert(row, source)


@register("alpaca")
def _alpaca(row: Any, source: Source) -> Sample:
    assert isinstance(source.columns, AlpacaColumns)
    return alpaca_sample(row, source.columns)


@register("sharegpt")
def _sharegpt(row: Any, source: Source) -> Sample:
    assert isinstance(source.columns, SharegptColumns) and source.tags is not None
    return sharegpt_sample(row, source.columns, source.tags)


def _row_dict(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RowProblem(f"a row must be a JSON object, this one is {_kind(row)}")
    return row


def _kind(value: Any) -> str:
    names = {dict: "a JSON object", list: "a list", str: "text", bool: "true/false"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def _text(row: dict[str, Any], column: str | None, required: bool = False) -> str:
    """The text in row[column]; a missing or null optional column is empty."""
    value = None if column is None else row.get(column)
    if value is None:
        if required:
            raise RowProblem(f"it has no '{column}' column")
        return ""
    if not isinstance(value, str):
        raise RowProblem(f"column '{column}' holds {_kind(value)}, not text")
    return value


def alpaca_sample(row: Any, columns: AlpacaColumns) -> Sample:
    """An alpaca row: user text is prompt and query joined by a newline (query when
    non-empty), history pairs come first, the system column is the system prompt."""
    row = _row_dict(row)
    prompt = _text(row, columns.prompt, required=True)
    response = _text(row, columns.response, required=True)
    query = _text(row, columns.query)
    user = "\n".join(part for part in (prompt, query) if part)
    earlier = _history(row.get(columns.history) if columns.history else None, columns.history)
    return Sample((*earlier, (user, response)), _text(row, columns.system))


def _history(value: Any, column: str | None) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    pairs = value if isinstance(value, list) else None
    if pairs is None or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(t, str) for t in p)
        for p in pairs
    ):
        raise RowProblem(
            f"column '{column}' must be a list of [user, assistant] text pairs, "
            f"it is {_kind(value) if pairs is None else 'a list of something else'}"
        )
    return tuple((user, assistant) for user, assistant in pairs)


def sharegpt_sample(row: Any, columns: SharegptColumns, tags: Tags) -> Sample:
    """A sharegpt conversation: an optional leading system message, then user and assistant
    messages alternating, starting with the user and ending with the assistant."""
    row = _row_dict(row)
    messages = row.get(columns.messages)
    if messages is None:
        raise RowProblem(f"it has no '{columns.messages}' column")
    if not isinstance(messages, list):
        raise RowProblem(f"column '{columns.messages}' holds {_kind(messages)}, not a list")
    pairs = [_message(m, k, tags) for k, m in enumerate(messages)]
    first = 0
    system = _text(row, columns.system)
    if pairs and tags.system is not None and pairs[0][0] == tags.system:
        system, first = pairs[0][1], 1
    roles = (tags.user, tags.assistant)
    for k in range(first, len(pairs)):
        role, wanted = pairs[k][0], roles[(k - first) % 2]
        if role in (tags.observation, tags.function):
            raise RowProblem(
                f"message {k} has role '{role}': tool-use data (function calls and "
                "observations) is not supported; remove these conversations"
            )
        if role != wanted:
            who = "user" if wanted == tags.user else "assistant"
            raise RowProblem(
                f"message {k} has role '{role}' where the {who} ('{wanted}') belongs; turns "
                f"must alternate '{tags.user}' and '{tags.assistant}', starting with "
                f"'{tags.user}'"
                + (f" after an optional first '{tags.system}' message" if tags.system else "")
            )
    texts = [text for _, text in pairs[first:]]
    if not texts:
        raise RowProblem("the conversation has no user or assistant message")
    if len(texts) % 2:
        raise RowProblem(
            f"the conversation ends on a user turn ({len(texts)} user and assistant "
            "messages); it must end with the assistant's reply"
        )
    return Sample(tuple(zip(texts[::2], texts[1::2], strict=True)), system)


def _message(message: Any, k: int, tags: Tags) -> tuple[str, str]:
    """(role, content) of message k."""
    if not isinstance(message, dict):
        raise RowProblem(f"message {k} is {_kind(message)}, not a JSON object")
    for key in (tags.role, tags.content):
        if key not in message:
            raise RowProblem(f"message {k} has no '{key}' key (its keys: {sorted(message)})")
    role, content = message[tags.role], message[tags.content]
    if not isinstance(role, str) or not isinstance(content, str):
        raise RowProblem(f"message {k}: '{tags.role}' and '{tags.content}' must be text")
    return role, content
