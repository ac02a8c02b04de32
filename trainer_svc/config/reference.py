"""The reference of the trainer's YAML keys, from TrainConfig's fields: per group, each key with
its type, its default and its description, as text for a terminal or as markdown tables
(`trainer-svc keys [--format markdown]`)."""

from __future__ import annotations

import shutil
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from trainer_svc.config.train_config import KEY_GROUPS

FORMATS = ("text", "markdown")
REQUIRED = "required"  # the default of a key the YAML must give


@dataclass(frozen=True)
class KeyReference:
    """One YAML key as the reference prints it."""

    name: str
    type: str
    default: str
    description: str


def key_groups() -> Iterator[tuple[str, list[KeyReference]]]:
    """(group, its keys) in the order of KEY_GROUPS, each group's keys in field order."""
    for group, keys in KEY_GROUPS:
        yield group, [describe(name, field) for name, field in keys.model_fields.items()]


def describe(name: str, field: FieldInfo) -> KeyReference:
    return KeyReference(
        name, type_name(field.annotation), default_text(field), field.description or ""
    )


def type_name(annotation: Any) -> str:
    """A YAML reader's name for a field's type: str, int, list of str, "sync" | "async", ..."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(scalar(value) for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        named = [type_name(arg) for arg in args if arg is not type(None)]
        return " | ".join(named + (["null"] if type(None) in args else []))
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        return f"list of {type_name(item)}"
    if origin is dict or annotation is dict:
        key, value = get_args(annotation) or (str, Any)
        return f"mapping of {type_name(key)} to {type_name(value)}"
    if origin is not None:  # Annotated and the like: the type they annotate
        return type_name(get_args(annotation)[0])
    if annotation is Any:
        return "any value"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return REQUIRED
    return scalar(field.get_default(call_default_factory=True))


def scalar(value: Any) -> str:
    """A value as it is written in the YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value.strip() != value or not value else value
    if isinstance(value, list):
        return "[" + ", ".join(scalar(item) for item in value) + "]"
    return str(value)


def as_text(width: int | None = None) -> str:
    """The reference for a terminal: a heading per group, then each key with its type and
    default, its description wrapped and indented below."""
    width = width or shutil.get_terminal_size().columns
    width = max(40, min(width, 100))
    lines: list[str] = []
    for group, keys in key_groups():
        if lines:
            lines.append("")
        lines.append(group.upper())
        for key in keys:
            default = "required" if key.default == REQUIRED else f"default {key.default}"
            lines.append(f"  {key.name}  ({key.type}; {default})")
            lines += textwrap.wrap(
                key.description,
                width,
                initial_indent=" " * 6,
                subsequent_indent=" " * 6,
                break_long_words=False,
                break_on_hyphens=False,
            )
    return "\n".join(lines) + "\n"


def as_markdown() -> str:
    """The reference as markdown: a heading and a table (key, type, default, meaning) per
    group."""
    parts: list[str] = []
    for group, keys in key_groups():
        rows = [
            f"| `{key.name}` | {cell(key.type)} | {cell(key.default)} | {cell(key.description)} |"
            for key in keys
        ]
        header = ["| key | type | default | meaning |", "|---|---|---|---|"]
        parts.append("\n".join([f"### {group.capitalize()}", "", *header, *rows]))
    return "\n\n".join(parts) + "\n"


def cell(text: str) -> str:
    """Text for a markdown table cell: its pipes escaped, on one line."""
    return " ".join(text.split()).replace("|", "\\|")


def render(kind: str = "text", width: int | None = None) -> str:
    """The reference in the format `kind` names (one of FORMATS)."""
    if kind == "markdown":
        return as_markdown()
    if kind == "text":
        return as_text(width)
    raise ValueError(f"{kind!r} is not one of {', '.join(FORMATS)}")
