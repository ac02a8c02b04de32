"""The training data as a LLaMA-Factory user sets it up, read into Samples by both services.

`dataset` is a comma list of items, concatenated in order (LLaMA-Factory's "concat" mix). An
item ending in .json or .jsonl is a file path (from the working directory, else from
dataset_dir); any other item is a name in dataset_dir/dataset_info.json, whose entry gives a
`file_name` (a file, or a folder whose .json/.jsonl files are read in name order), a
`formatting` (alpaca or sharegpt), `columns` and, for sharegpt, `tags`. The defaults are
LLaMA-Factory's, with one addition: an entry without `columns` (and a bare path) also reads
a row's `history` and `system` keys when present. Each dataset is cut to its first
max_samples rows before the datasets are joined, as LLaMA-Factory does.

LLaMA-Factory skips a malformed row with a warning; here it is an error, because the trainer
and the scorer must read the same samples: the message counts the bad rows and shows the
first. Hub datasets, tool use, images and preference data are refused by name.

A row's other columns (a `group` or `source` a user keeps with the data) are not part of its
sample; `load_rows` gives their scalar values with each sample, to describe and colour by.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from common.data.samples import Sample

DEFAULT_DATASET_DIR = "data"  # LLaMA-Factory's default, relative to the working directory
DATASET_INFO = "dataset_info.json"
FILE_SUFFIXES = (".json", ".jsonl")
FORMATTINGS = ("alpaca", "sharegpt")
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
T = TypeVar("T")

# A row's other columns: text, numbers, true/false and null only (lists and objects left out).
Scalar = str | int | float | bool | None
MAX_FIELDS = 32  # other columns kept per row, in the row's order
MAX_FIELD_NAME = 64  # characters; a column with a longer name is left out
MAX_FIELD_TEXT = 200  # characters of a text value kept (longer ones end with "…")


class DatasetError(ValueError):
    """The dataset cannot be found or read (the message says which file and why)."""


class _RowProblem(Exception):
    """Why one row is not a sample (collected, then reported with the file and row)."""


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

    prompt: str = "instruction"
    query: str | None = "input"
    response: str = "output"
    history: str | None = "history"
    system: str | None = "system"


@dataclass(frozen=True)
class SharegptColumns:
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
        return "alpaca" if isinstance(self.columns, AlpacaColumns) else "sharegpt"


# ---- the entry points ----


# Called with each path before it is looked at (exists, lists, reads): a reader that must stay
# within some folders raises in it.
Guard = Callable[[Path], None]


def _unguarded(path: Path) -> None:
    return None


def files(spec: DatasetSpec, guard: Guard = _unguarded) -> list[Path]:
    """Every data file load_samples(spec) reads, resolved, in reading order, each once
    (dataset_info.json, read from spec.dataset_dir, is not listed)."""
    found = [path for source in sources(spec, guard) for path in source.files]
    return list(dict.fromkeys(found))


def load_samples(spec: DatasetSpec, guard: Guard = _unguarded) -> list[Sample]:
    """Every sample of every dataset in spec.names, datasets in order, each cut to its first
    spec.max_samples rows. guard sees every path (dataset_info.json, entries' files and
    folders, path items) before it is looked at."""
    return [row.sample for row in load_rows(spec, guard)]


@dataclass(frozen=True)
class Row:
    """A row as read: its sample, and its other columns' scalar values (extra_fields)."""

    sample: Sample
    fields: dict[str, Scalar]

    @property
    def size(self) -> int:
        """About how many characters the row holds (to bound what a cache keeps)."""
        text = sum(len(user) + len(assistant) for user, assistant in self.sample.turns)
        return text + len(self.sample.system) + sum(len(str(v)) for v in self.fields.values())


def rows_size(rows: Iterable[Row]) -> int:
    """About how many characters the rows hold."""
    return sum(row.size for row in rows)


def load_rows(spec: DatasetSpec, guard: Guard = _unguarded) -> list[Row]:
    """load_samples(spec, guard), each sample with its row's other columns."""
    rows: list[Row] = []
    for source in sources(spec, guard):
        rows.extend(source_rows(source, spec.max_samples))
    return rows


def training_rows(
    spec: DatasetSpec,
    val_size: float | None = None,
    seed: int | None = None,
    guard: Guard = _unguarded,
) -> list[Row]:
    """The rows a run trains on, in sample-index order: load_rows, less the validation rows
    split_validation(val_size, seed) holds out when val_size is given (seed None: 0), as
    the scorer reads a run's samples."""
    rows = load_rows(spec, guard)
    return split_validation(rows, val_size, seed or 0)[0] if val_size else rows


def training_fields(
    spec: DatasetSpec,
    val_size: float | None = None,
    seed: int | None = None,
    guard: Guard = _unguarded,
) -> list[dict[str, Scalar]]:
    """The other columns of each training sample, by sample index (training_rows)."""
    return [row.fields for row in training_rows(spec, val_size, seed, guard)]


def absolute_spec(spec: DatasetSpec) -> DatasetSpec:
    """The same datasets named so that any working directory reads them: each path item
    replaced by its resolved file, and dataset_dir made absolute (the default filled in) when
    a name is looked up in it (None when every item is a path)."""
    items = [
        item if not is_path(item) else str(_path_item(item, spec.directory))
        for item in dataset_items(spec.names)
    ]
    names_one = any(not is_path(item) for item in items)
    directory = str(spec.directory.resolve()) if names_one else None  # only names need it
    return DatasetSpec(",".join(items), directory, spec.max_samples)


def split_validation(samples: Sequence[T], val_size: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, validation) as LLaMA-Factory's val_size asks: below 1 a fraction of the samples
    (rounded up, as datasets' train_test_split counts), from 1 up a number of samples (a
    fraction dropped, as LLaMA-Factory does); 1e-6 or less means no validation split.

    The validation rows are the first of a permutation drawn by numpy's RandomState(seed),
    whose stream numpy keeps fixed across versions and machines (LLaMA-Factory draws with
    another generator, so its rows differ). Both parts keep the samples' order.
    """
    n = len(samples)
    n_val = validation_count(n, val_size)
    if n_val == 0:
        return list(samples), []
    if not 0 <= seed < 2**32:
        raise DatasetError(f"seed must be within [0, 2**32 - 1] to split by val_size, got {seed}")
    chosen = set(np.random.RandomState(seed).permutation(n)[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in chosen]
    validation = [s for i, s in enumerate(samples) if i in chosen]
    return train, validation


def validation_count(n: int, val_size: float) -> int:
    """How many of n samples val_size takes for validation (0: no split); refuses a
    val_size that leaves no sample on either side."""
    if isinstance(val_size, bool) or not isinstance(val_size, int | float) or val_size < 0:
        raise DatasetError(
            f"val_size must be a fraction below 1 or a number of samples, got {val_size!r}"
        )
    if val_size <= 1e-6:
        return 0
    if n == 0:
        raise DatasetError(f"val_size {val_size} asks to split a dataset of no samples")
    # round() first: 0.1 of 30 is 3, not the 4 that ceil(3.0000000000000004) gives
    n_val = math.ceil(round(val_size * n, 6)) if val_size < 1 else int(val_size)
    if n_val >= n:
        raise DatasetError(
            f"val_size {val_size} takes {n_val} of the {n} samples for validation, leaving "
            "none to train on; give a smaller fraction or count"
        )
    return n_val


# ---- names, paths and entries ----


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


def sources(spec: DatasetSpec, guard: Guard = _unguarded) -> list[Source]:
    """Each item of spec.names as a Source, in order; dataset_info.json is read only when an
    item is a name."""
    info: dict[str, Any] | None = None
    found = []
    read_by: dict[Path, str] = {}  # each file, resolved, and the item that reads it
    for item in dataset_items(spec.names):
        if is_path(item):
            path = _path_item(item, spec.directory, guard)
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
    """Whether a dataset item is a file path (a .json/.jsonl suffix) rather than a name."""
    return Path(item).suffix.lower() in FILE_SUFFIXES


def _path_item(item: str, directory: Path, guard: Guard = _unguarded) -> Path:
    """A .json/.jsonl item: from the working directory, else from dataset_dir."""
    path = Path(item).expanduser()
    candidates = (path,) if path.is_absolute() else (path, directory / path)
    for candidate in candidates:
        guard(candidate)
        if candidate.is_file():
            return candidate.resolve()
    also = "" if path.is_absolute() else f" nor at {directory / path}"
    raise DatasetError(
        f"dataset file {item} does not exist (not at {path.resolve()}{also}); give the path "
        "of an existing .json or .jsonl file"
    )


def read_dataset_info(directory: Path, wanted: str, guard: Guard = _unguarded) -> dict[str, Any]:
    """dataset_dir/dataset_info.json, which must exist since the item `wanted` is a name."""
    raw = str(directory)
    if raw == "ONLINE" or raw.startswith("REMOTE:"):
        raise DatasetError(
            f"dataset_dir '{raw}' means datasets from a hub, and this tool reads local files "
            "only; download the data, then set dataset_dir to a folder with a "
            f"{DATASET_INFO} that names it, or give the path of a .json/.jsonl file"
        )
    path = directory / DATASET_INFO
    guard(path)
    if not path.is_file():
        raise DatasetError(
            f"dataset '{wanted}' is not a .json/.jsonl path, so it must be a name in "
            f"{path}, which does not exist; set dataset_dir to the folder holding "
            f"{DATASET_INFO} (default: '{DEFAULT_DATASET_DIR}' in the working directory), "
            "or give the path of a .json/.jsonl file"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise DatasetError(f"{path} must hold a JSON object of dataset entries by name")
    return info


def entry_source(
    name: str, info: dict[str, Any], directory: Path, guard: Guard = _unguarded
) -> Source:
    """The entry `name` of dataset_info.json as a Source (LLaMA-Factory's DatasetAttr)."""
    where = f"dataset '{name}' in {directory / DATASET_INFO}"
    if name not in info:
        close = difflib.get_close_matches(name, [str(k) for k in info], n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DatasetError(
            f"dataset '{name}' is not in {directory / DATASET_INFO} ({len(info)} entries); "
            f"{hint}add an entry with its file_name, or give the path of a .json/.jsonl file"
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
    columns_given = _mapping(entry, "columns", where)
    tags_given = _mapping(entry, "tags", where)
    paths = entry_files(entry.get("file_name"), directory, where, guard)
    label = f"dataset '{name}'"
    if formatting == "alpaca":
        return Source(label, paths, alpaca_columns(columns_given), entry=True)
    columns, tags = sharegpt_columns(columns_given), sharegpt_tags(tags_given)
    return Source(label, paths, columns, tags, entry=True)


def _refuse_unsupported(entry: dict[str, Any], where: str) -> None:
    hub = [key for key in HUB_KEYS if key in entry]
    if hub:
        local = (
            f"remove {', '.join(hub)} from the entry so that its file_name is read"
            if "file_name" in entry
            else "download the data, then give the entry a file_name (relative to "
            "dataset_dir), or give the path of the .json/.jsonl file instead of the name"
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


def entry_files(
    file_name: Any, directory: Path, where: str, guard: Guard = _unguarded
) -> tuple[Path, ...]:
    """The files of an entry's file_name (relative to dataset_dir): the file, or a folder's
    .json/.jsonl files in name order."""
    if not isinstance(file_name, str) or not file_name:
        raise DatasetError(
            f"{where} has no file_name; give the .json/.jsonl file (or folder of them), "
            "relative to dataset_dir"
        )
    path = (directory / Path(file_name).expanduser()).resolve()
    guard(path)
    if path.is_dir():
        found = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in FILE_SUFFIXES),
            key=lambda p: p.name,
        )
        for member in found:
            guard(member)
        found = [p.resolve() for p in found if p.is_file()]
        if not found:
            raise DatasetError(f"{where}: the folder {path} holds no .json or .jsonl file")
        return tuple(found)
    if not path.is_file():
        raise DatasetError(f"{where} names file_name {file_name}, but {path} does not exist")
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DatasetError(
            f"{where}: {path} is not a .json or .jsonl file, the only kinds this tool reads; "
            "convert it to JSON (a list of rows, or one row per line)"
        )
    return (path,)


# ---- rows into samples ----


def source_samples(source: Source, max_samples: int | None = None) -> list[Sample]:
    """The source's rows (its files in order, cut to max_samples) as samples; any bad row
    refuses the whole dataset, the message counting them and showing the first."""
    return [row.sample for row in source_rows(source, max_samples)]


def source_rows(source: Source, max_samples: int | None = None) -> list[Row]:
    """source_samples, each sample with its row's other columns."""
    rows = [row for path in source.files for row in read_rows(path)]
    if not rows:
        raise DatasetError(f"{source.label} holds no rows ({_file_list(source.files)})")
    convert = _converter(source)
    read = {name for name in vars(source.columns).values() if name is not None}
    found, bad = [], []
    for where, row in rows[:max_samples]:
        try:
            found.append(Row(convert(row), extra_fields(row, read)))
        except _RowProblem as problem:
            bad.append((where, str(problem)))
    if bad:
        where, reason = bad[0]
        count = "1 row" if len(bad) == 1 else f"{len(bad)} rows"
        raise DatasetError(
            f"{source.label}: {count} cannot be read as {source.formatting} samples, the "
            f"first at {where}: {reason}. Reading with {_mapping_text(source)}. Both "
            "services must read the same samples, so no row is skipped: fix or remove these "
            "rows" + (", or correct the entry's columns and tags" if source.entry else "")
        )
    return found


def extra_fields(row: dict[str, Any], read: Collection[str]) -> dict[str, Scalar]:
    """The row's columns other than those in `read` (the ones its sample is made of) whose
    values are scalars: text shortened to MAX_FIELD_TEXT, a number that is not finite as null.
    At most MAX_FIELDS, in the row's order; a name longer than MAX_FIELD_NAME is left out."""
    found: dict[str, Scalar] = {}
    for name, value in row.items():
        if len(found) == MAX_FIELDS:
            break
        if name in read or len(name) > MAX_FIELD_NAME:
            continue
        if isinstance(value, str):
            found[name] = (
                value if len(value) <= MAX_FIELD_TEXT else value[: MAX_FIELD_TEXT - 1] + "…"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            found[name] = None  # JSON has no NaN or infinity
        elif value is None or isinstance(value, bool | int | float):
            found[name] = value
    return found


def _converter(source: Source) -> Callable[[Any], Sample]:
    columns, tags = source.columns, source.tags
    if isinstance(columns, AlpacaColumns):
        return lambda row: alpaca_sample(row, columns)
    assert tags is not None
    return lambda row: sharegpt_sample(row, columns, tags)


def _mapping_text(source: Source) -> str:
    """The columns and tags in use, under the names dataset_info.json gives them."""

    def named(obj: object, suffix: str = "") -> str:
        pairs = [(k, v) for k, v in vars(obj).items() if v is not None]
        return ", ".join(f"{k}{suffix}={v!r}" for k, v in pairs)

    text = f"columns {named(source.columns)}"
    return text if source.tags is None else f"{text} and tags {named(source.tags, '_tag')}"


def _file_list(paths: Sequence[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} files in {paths[0].parent}"


def read_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, row) for each row of a JSON list or of JSON lines (either suffix, as
    LLaMA-Factory's reader takes both); where is "PATH row i" (from 0) or "PATH line n"."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
        return [(f"{path} row {i}", row) for i, row in enumerate(rows)]
    found = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append((f"{path} line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path} line {n} is not valid JSON ({exc.msg}); a file that is not one JSON "
                "list must hold one JSON object per line"
            ) from exc
    return found


def _row_dict(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _RowProblem(f"a row must be a JSON object, this one is {_kind(row)}")
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
            raise _RowProblem(f"it has no '{column}' column")
        return ""
    if not isinstance(value, str):
        raise _RowProblem(f"column '{column}' holds {_kind(value)}, not text")
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
        raise _RowProblem(
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
        raise _RowProblem(f"it has no '{columns.messages}' column")
    if not isinstance(messages, list):
        raise _RowProblem(f"column '{columns.messages}' holds {_kind(messages)}, not a list")
    pairs = [_message(m, k, tags) for k, m in enumerate(messages)]
    first = 0
    system = _text(row, columns.system)
    if pairs and tags.system is not None and pairs[0][0] == tags.system:
        system, first = pairs[0][1], 1
    roles = (tags.user, tags.assistant)
    for k in range(first, len(pairs)):
        role, wanted = pairs[k][0], roles[(k - first) % 2]
        if role in (tags.observation, tags.function):
            raise _RowProblem(
                f"message {k} has role '{role}': tool-use data (function calls and "
                "observations) is not supported; remove these conversations"
            )
        if role != wanted:
            who = "user" if wanted == tags.user else "assistant"
            raise _RowProblem(
                f"message {k} has role '{role}' where the {who} ('{wanted}') belongs; turns "
                f"must alternate '{tags.user}' and '{tags.assistant}', starting with "
                f"'{tags.user}'"
                + (f" after an optional first '{tags.system}' message" if tags.system else "")
            )
    texts = [text for _, text in pairs[first:]]
    if not texts:
        raise _RowProblem("the conversation has no user or assistant message")
    if len(texts) % 2:
        raise _RowProblem(
            f"the conversation ends on a user turn ({len(texts)} user and assistant "
            "messages); it must end with the assistant's reply"
        )
    return Sample(tuple(zip(texts[::2], texts[1::2], strict=True)), system)


def _message(message: Any, k: int, tags: Tags) -> tuple[str, str]:
    """(role, content) of message k."""
    if not isinstance(message, dict):
        raise _RowProblem(f"message {k} is {_kind(message)}, not a JSON object")
    for key in (tags.role, tags.content):
        if key not in message:
            raise _RowProblem(f"message {k} has no '{key}' key (its keys: {sorted(message)})")
    role, content = message[tags.role], message[tags.content]
    if not isinstance(role, str) or not isinstance(content, str):
        raise _RowProblem(f"message {k}: '{tags.role}' and '{tags.content}' must be text")
    return role, content
