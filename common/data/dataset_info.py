"""LLaMA-Factory's dataset setup, as its data/parser.py reads it: the dataset list, the
dataset_info.json entries, their files, and the columns and tags a row is read by.

`dataset` is a comma list of items, concatenated in order (LLaMA-Factory's "concat" mix). An
item ending in a data file's suffix (FILE_KINDS: .json, .jsonl, .csv, .parquet, .arrow) is a
file path (from the working directory, else from dataset_dir); any other item is a name in
dataset_dir/dataset_info.json, whose entry gives a `file_name` (a data file, or a folder whose
data files, all of one kind, are read in name order), a `formatting` (alpaca or sharegpt),
`columns` and, for sharegpt, `tags`. The defaults are LLaMA-Factory's, with one addition: an
entry without `columns` (and a bare path) also reads a row's `history` and `system` keys when
present. Hub datasets, other kinds of file (LLaMA-Factory's .txt among them), sharegpt in csv
(a cell cannot hold a list of messages), tool use, images and preference data are refused by
name. Each item becomes a Source; common.data.datasets reads its files' rows and
common.data.converters turns them into samples.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

DEFAULT_DATASET_DIR = "data"  # LLaMA-Factory's default, relative to the working directory
DATASET_INFO = "dataset_info.json"
# Each kind of data file read, by suffix, with the `datasets` loader that reads it: LLaMA-Factory's
# FILEEXT2TYPE less .txt (plain text, for pre-training). JSON is read by this package's own
# reader (common.data.datasets), the others by the `datasets` library, as LLaMA-Factory does.
FILE_KINDS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
FILE_SUFFIXES = tuple(FILE_KINDS)
KINDS_TEXT = f"{', '.join(FILE_SUFFIXES[:-1])} or {FILE_SUFFIXES[-1]}"  # for messages
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# Columns LLaMA-Factory reads for data this tool does not train on (it reads text turns only).
UNSUPPORTED_COLUMNS = {
    "tools": "tool descriptions",
    "images": "images",
    "videos": "videos",
    "audios": "audio",
    "chosen": "preference pairs",
    "rejected": "preference pairs",
    "kto_tag": "KTO feedback",
}


class DatasetError(ValueError):
    """The dataset cannot be found or read (the message says which file and why)."""


@dataclass(frozen=True)
class DatasetSpec:
    """What both services need to read the same samples: LLaMA-Factory's `dataset`,
    `dataset_dir` (None: DEFAULT_DATASET_DIR) and `max_samples` (None: every row)."""

    names: str
    dataset_dir: str | None = None
    max_samples: int | None = None

    def __post_init__(self) -> None:
        n = self.max_samples
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise DatasetError(
                f"max_samples must be a whole number of at least 1, got {n!r}; "
                "leave it out to read every row"
            )

    @property
    def directory(self) -> Path:
        return Path(self.dataset_dir or DEFAULT_DATASET_DIR).expanduser()


@dataclass(frozen=True)
class AlpacaColumns:
    """Row keys of an alpaca dataset; None: the dataset has no such column."""

    formatting: ClassVar[str] = "alpaca"

    prompt: str = "instruction"
    query: str | None = "input"
    response: str = "output"
    history: str | None = "history"
    system: str | None = "system"


@dataclass(frozen=True)
class SharegptColumns:
    """Row keys of a sharegpt dataset; None: the dataset has no such column."""

    formatting: ClassVar[str] = "sharegpt"

    messages: str = "conversations"
    system: str | None = "system"


@dataclass(frozen=True)
class Tags:
    """Message keys (role, content) and role values of a sharegpt dataset; None: no such role."""

    role: str = "from"
    content: str = "value"
    user: str = "human"
    assistant: str = "gpt"
    observation: str | None = "observation"
    function: str | None = "function_call"
    system: str | None = "system"


@dataclass(frozen=True)
class Source:
    """One item of the dataset list: its files and how their rows become samples."""

    label: str  # "dataset 'name'" or "file PATH", for messages
    files: tuple[Path, ...]
    columns: AlpacaColumns | SharegptColumns
    tags: Tags | None = None  # sharegpt only
    entry: bool = False  # named in dataset_info.json (else a bare path)

    @property
    def formatting(self) -> str:
        return self.columns.formatting


# Called with each path before it is looked at (exists, lists, reads): a reader that must stay
# within some folders raises in it.
Guard = Callable[[Path], None]


def unguarded(path: Path) -> None:
    return None


def dataset_items(names: str) -> list[str]:
    """The items of a comma list, stripped; an empty or repeated item is refused."""
    items = [item.strip() for item in names.split(",")]
    if not all(items):
        raise DatasetError(
            f"dataset '{names}' has an empty item; give names or paths separated by commas"
        )
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise DatasetError(
            f"dataset '{names}' lists {', '.join(repeated)} more than once (LLaMA-Factory "
            "would read it once); list each dataset once"
        )
    return items


def sources(spec: DatasetSpec, guard: Guard = unguarded) -> list[Source]:
    """Each item of spec.names as a Source, in order; dataset_info.json is read only when an
    item is a name."""
    info: dict[str, Any] | None = None
    found = []
    read_by: dict[Path, str] = {}  # each file, resolved, and the item that reads it
    for item in dataset_items(spec.names):
        if is_path(item):
            path = path_item(item, spec.directory, guard)
            source = Source(f"file {path}", (path,), AlpacaColumns())
        else:
            if info is None:
                info = read_dataset_info(spec.directory, item, guard)
            source = entry_source(item, info, spec.directory, guard)
        _refuse_reread(source, item, read_by)
        found.append(source)
    return found


def _refuse_reread(source: Source, item: str, read_by: dict[Path, str]) -> None:
    """Refuse an item whose file an earlier item reads already (another spelling of its path,
    or another name for it): each file is read once, before any row of it is."""
    for path in source.files:
        if path in read_by:
            earlier = read_by[path]
            both = (
                f"dataset item '{item}' reads"
                if earlier == item
                else (f"dataset items '{earlier}' and '{item}' both read")
            )
            raise DatasetError(
                f"{both} {path} (one file under two names or spellings, or a link to it); "
                "list each dataset once"
            )
        read_by[path] = item


def is_path(item: str) -> bool:
    """Whether a dataset item is a file path (a suffix of FILE_KINDS) rather than a name."""
    return Path(item).suffix.lower() in FILE_SUFFIXES


def file_kind(path: Path) -> str:
    """The loader of a data file by its suffix (FILE_KINDS): json, csv, parquet or arrow. A
    suffix of no kind (the target of a link whose own name gives the kind) reads as JSON."""
    return FILE_KINDS.get(path.suffix.lower(), "json")


def path_item(item: str, directory: Path, guard: Guard = unguarded) -> Path:
    """A data file item: from the working directory, else from dataset_dir."""
    path = Path(item).expanduser()
    candidates = (path,) if path.is_absolute() else (path, directory / path)
    for candidate in candidates:
        guard(candidate)
        if candidate.is_file():
            return candidate.resolve()
    also = "" if path.is_absolute() else f" nor at {directory / path}"
    raise DatasetError(
        f"dataset file {item} does not exist (not at {path.resolve()}{also}); give the path "
        f"of an existing {KINDS_TEXT} file"
    )


def read_dataset_info(directory: Path, wanted: str, guard: Guard = unguarded) -> dict[str, Any]:
    """dataset_dir/dataset_info.json, which must exist since the item `wanted` is a name."""
    raw = str(directory)
    if raw == "ONLINE" or raw.startswith("REMOTE:"):
        raise DatasetError(
            f"dataset_dir '{raw}' means datasets from a hub, and this tool reads local files "
            "only; download the data, then set dataset_dir to a folder with a "
            f"{DATASET_INFO} that names it, or give the path of a {KINDS_TEXT} file"
        )
    path = directory / DATASET_INFO
    guard(path)
    if not path.is_file():
        raise DatasetError(
            f"dataset '{wanted}' is not the path of a {KINDS_TEXT} file, so it must be a "
            f"name in {path}, which does not exist; set dataset_dir to the folder holding "
            f"{DATASET_INFO} (default: '{DEFAULT_DATASET_DIR}' in the working directory), "
            f"or give the path of a {KINDS_TEXT} file"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise DatasetError(f"{path} must hold a JSON object of dataset entries by name")
    return info


def entry_source(
    name: str, info: dict[str, Any], directory: Path, guard: Guard = unguarded
) -> Source:
    """The entry `name` of dataset_info.json as a Source (LLaMA-Factory's DatasetAttr)."""
    where = f"dataset '{name}' in {directory / DATASET_INFO}"
    if name not in info:
        close = difflib.get_close_matches(name, [str(k) for k in info], n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DatasetError(
            f"dataset '{name}' is not in {directory / DATASET_INFO} ({len(info)} entries); "
            f"{hint}add an entry with its file_name, or give the path of a {KINDS_TEXT} file"
        )
    entry = info[name]
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} must be a JSON object with a file_name")
    _refuse_unsupported(entry, where)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DatasetError(
            f"{where} has formatting '{formatting}'; this tool reads "
            f"{' and '.join(FORMATTINGS)} (OpenAI-style messages are sharegpt with tags "
            "role_tag 'role', content_tag 'content', user_tag 'user', assistant_tag "
            "'assistant', system_tag 'system')"
        )
    columns, tags = COLUMNS_READERS[formatting](
        _mapping(entry, "columns", where), _mapping(entry, "tags", where)
    )
    paths = entry_files(entry.get("file_name"), directory, where, guard)
    _refuse_messages_in_csv(columns, paths, where)
    return Source(f"dataset '{name}'", paths, columns, tags, entry=True)


def _refuse_messages_in_csv(
    columns: AlpacaColumns | SharegptColumns, paths: tuple[Path, ...], where: str
) -> None:
    """A sharegpt row holds a list of messages, which a csv cell cannot (it holds text; a JSON
    text there is not parsed, as LLaMA-Factory does not parse it)."""
    if isinstance(columns, SharegptColumns) and file_kind(paths[0]) == "csv":
        raise DatasetError(
            f"{where} is sharegpt data in csv ({_names(paths)}), but a csv cell holds text, "
            f"not the list of messages its '{columns.messages}' column must hold; store the "
            "conversations as .json, .jsonl, .parquet or .arrow, or make the entry alpaca "
            "(a prompt and a response column, text in each cell)"
        )


def _refuse_unsupported(entry: dict[str, Any], where: str) -> None:
    hub = [key for key in HUB_KEYS if key in entry]
    if hub:
        local = (
            f"remove {', '.join(hub)} from the entry so that its file_name is read"
            if "file_name" in entry
            else "download the data, then give the entry a file_name (relative to "
            f"dataset_dir), or give the path of the {KINDS_TEXT} file instead of the name"
        )
        raise DatasetError(
            f"{where} is a hub dataset ({hub[0]}: {entry[hub[0]]}), and this tool reads "
            f"local files only; {local}"
        )
    if entry.get("ranking"):
        raise DatasetError(
            f"{where} is preference data (ranking: true); this tool selects supervised "
            "fine-tuning data (one response per prompt)"
        )
    if entry.get("num_samples") is not None:
        raise DatasetError(
            f"{where} has num_samples (random sampling), which this tool does not do; remove "
            "it, and set max_samples to read the first rows of each dataset"
        )
    columns = entry.get("columns") or {}
    unsupported = [
        key for key in UNSUPPORTED_COLUMNS if isinstance(columns, dict) and key in columns
    ]
    if unsupported:
        what = ", ".join(f"{key} ({UNSUPPORTED_COLUMNS[key]})" for key in unsupported)
        raise DatasetError(
            f"{where} names the columns {what}; this tool trains on text conversations only. "
            "Leave those columns out of the entry to train on the text alone"
        )


def _mapping(entry: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DatasetError(f"{where}: '{key}' must be a JSON object of names (text)")
    return value


def alpaca_columns(given: dict[str, str] | None) -> AlpacaColumns:
    """An entry's alpaca `columns`. Without them, the defaults (history and system read when a
    row has them); with them, as LLaMA-Factory: query, history and system only when named
    (prompt and response keep their defaults when not named)."""
    if given is None:
        return AlpacaColumns()
    return AlpacaColumns(
        prompt=given.get("prompt", "instruction"),
        query=given.get("query"),
        response=given.get("response", "output"),
        history=given.get("history"),
        system=given.get("system"),
    )


def sharegpt_columns(given: dict[str, str] | None) -> SharegptColumns:
    """An entry's sharegpt `columns`: messages (default conversations) and system (read when
    a row has it if no columns are given; with columns, only when named, as LLaMA-Factory)."""
    if given is None:
        return SharegptColumns()
    return SharegptColumns(given.get("messages", "conversations"), given.get("system"))


def sharegpt_tags(given: dict[str, str] | None) -> Tags:
    """An entry's `tags`. With tags, as LLaMA-Factory, the observation, function and system
    roles exist only when named; role, content, user and assistant keep their defaults."""
    if given is None:
        return Tags()
    return Tags(
        role=given.get("role_tag", "from"),
        content=given.get("content_tag", "value"),
        user=given.get("user_tag", "human"),
        assistant=given.get("assistant_tag", "gpt"),
        observation=given.get("observation_tag"),
        function=given.get("function_tag"),
        system=given.get("system_tag"),
    )


# The parser's half of each formatting: an entry's `columns` and `tags` (None when not given)
# into the Source's columns and tags. The converter's half, the rows into samples, is
# common.data.converters.CONVERTERS; a new format adds one of each, under the same name.
ColumnsReader = Callable[
    [dict[str, str] | None, dict[str, str] | None],
    tuple["AlpacaColumns | SharegptColumns", "Tags | None"],
]
COLUMNS_READERS: dict[str, ColumnsReader] = {
    "alpaca": lambda columns, tags: (alpaca_columns(columns), None),
    "sharegpt": lambda columns, tags: (sharegpt_columns(columns), sharegpt_tags(tags)),
}
FORMATTINGS = tuple(COLUMNS_READERS)


def entry_files(
    file_name: Any, directory: Path, where: str, guard: Guard = unguarded
) -> tuple[Path, ...]:
    """The files of an entry's file_name (relative to dataset_dir): the data file, or a
    folder's data files in name order, all of one kind (files of no kind read here, a README
    say, are left alone)."""
    if not isinstance(file_name, str) or not file_name:
        raise DatasetError(
            f"{where} has no file_name; give the data file ({KINDS_TEXT}) or a folder of "
            "them, relative to dataset_dir"
        )
    path = (directory / Path(file_name).expanduser()).resolve()
    guard(path)
    if path.is_dir():
        return _folder_files(path, where, guard)
    if not path.is_file():
        raise DatasetError(f"{where} names file_name {file_name}, but {path} does not exist")
    if not is_path(path.name):
        kind = f"a {path.suffix} file" if path.suffix else "a file without a suffix"
        raise DatasetError(
            f"{where}: {path} is {kind}, not a kind this tool reads ({KINDS_TEXT}); convert "
            "it to one of them (JSON: a list of rows, or one row per line)"
        )
    return (path,)


def _folder_files(folder: Path, where: str, guard: Guard) -> tuple[Path, ...]:
    """A folder's data files, resolved, in name order; guard sees each before it is looked at."""
    members = sorted(folder.iterdir(), key=lambda p: p.name)
    found = [p for p in members if is_path(p.name)]
    for member in found:
        guard(member)
    found = [p.resolve() for p in found if p.is_file()]
    if not found:
        held = f" (it holds {_names(members)})" if members else " (it is empty)"
        raise DatasetError(f"{where}: the folder {folder} holds no {KINDS_TEXT} file{held}")
    _refuse_mixed_kinds(found, folder, where)
    return tuple(found)


def _refuse_mixed_kinds(paths: list[Path], folder: Path, where: str) -> None:
    """LLaMA-Factory reads a folder with one loader: its files must be of one kind (.json and
    .jsonl are one)."""
    by_kind: dict[str, list[Path]] = {}
    for path in paths:
        by_kind.setdefault(file_kind(path), []).append(path)
    if len(by_kind) > 1:
        kinds = "; ".join(f"{kind}: {_names(found)}" for kind, found in by_kind.items())
        raise DatasetError(
            f"{where}: the folder {folder} holds data files of {len(by_kind)} kinds ({kinds}), "
            "and a folder is read as one kind (.json and .jsonl are one); move the files of "
            "the other kinds to a folder of their own and give it an entry of its own"
        )


def _names(paths: Sequence[Path], most: int = 3) -> str:
    """The first few file names of paths, for messages."""
    shown = ", ".join(path.name for path in paths[:most])
    return shown if len(paths) <= most else f"{shown} and {len(paths) - most} more"
