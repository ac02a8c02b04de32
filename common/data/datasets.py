"""The training data as a LLaMA-Factory user sets it up, read into Samples by both services.

common.data.dataset_info reads the setup (the dataset list, dataset_info.json, paths, columns
and tags) into Sources; read_rows reads each file's rows by its kind; common.data.converters
turns a row into a Sample by its formatting. Each dataset is cut to its first max_samples rows
before the datasets are joined, as LLaMA-Factory does.

JSON (.json, .jsonl) is read by read_json_rows; csv, parquet and arrow files by the `datasets`
library's loader of that kind, as LLaMA-Factory reads them, from the local file only (nothing
is downloaded, and what the loader writes goes to a temporary folder removed after). A null
cell (a csv's empty field) is left out of its row, as a key missing from a JSON row.

LLaMA-Factory skips a malformed row with a warning; here it is an error, because the trainer
and the scorer must read the same samples: the message counts the bad rows and shows the
first.

A row's other columns (a `group` or `source` a user keeps with the data) are not part of its
sample; `load_rows` gives their scalar values with each sample, to describe and colour by.
"""

from __future__ import annotations

import glob
import json
import math
import tempfile
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from common.data.converters import RowProblem, alpaca_sample, converter, sharegpt_sample
from common.data.dataset_info import (
    DATASET_INFO,
    DEFAULT_DATASET_DIR,
    FILE_KINDS,
    FILE_SUFFIXES,
    FORMATTINGS,
    KINDS_TEXT,
    AlpacaColumns,
    DatasetError,
    DatasetSpec,
    Guard,
    SharegptColumns,
    Source,
    Tags,
    alpaca_columns,
    dataset_items,
    entry_files,
    entry_source,
    file_kind,
    is_path,
    path_item,
    read_dataset_info,
    sharegpt_columns,
    sharegpt_tags,
    sources,
    unguarded,
)
from common.data.samples import Sample

__all__ = [
    "DATASET_INFO",
    "DEFAULT_DATASET_DIR",
    "FILE_KINDS",
    "FILE_SUFFIXES",
    "FORMATTINGS",
    "KINDS_TEXT",
    "MAX_FIELDS",
    "MAX_FIELD_NAME",
    "MAX_FIELD_TEXT",
    "AlpacaColumns",
    "DatasetError",
    "DatasetSpec",
    "Guard",
    "Row",
    "Scalar",
    "SharegptColumns",
    "Source",
    "Tags",
    "absolute_spec",
    "alpaca_columns",
    "alpaca_sample",
    "dataset_items",
    "entry_files",
    "entry_source",
    "extra_fields",
    "file_kind",
    "files",
    "is_path",
    "load_rows",
    "load_samples",
    "read_dataset_info",
    "read_json_rows",
    "read_rows",
    "read_table_rows",
    "rows_size",
    "sharegpt_columns",
    "sharegpt_sample",
    "sharegpt_tags",
    "source_rows",
    "source_samples",
    "sources",
    "split_validation",
    "training_fields",
    "training_rows",
    "validation_count",
]

T = TypeVar("T")

# A row's other columns: text, numbers, true/false and null only (lists and objects left out).
Scalar = str | int | float | bool | None
MAX_FIELDS = 32  # other columns kept per row, in the row's order
MAX_FIELD_NAME = 64  # characters; a column with a longer name is left out
MAX_FIELD_TEXT = 200  # characters of a text value kept (longer ones end with "…")


# ---- the entry points ----


def files(spec: DatasetSpec, guard: Guard = unguarded) -> list[Path]:
    """Every data file load_samples(spec) reads, resolved, in reading order, each once
    (dataset_info.json, read from spec.dataset_dir, is not listed)."""
    found = [path for source in sources(spec, guard) for path in source.files]
    return list(dict.fromkeys(found))


def load_samples(spec: DatasetSpec, guard: Guard = unguarded) -> list[Sample]:
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


def load_rows(spec: DatasetSpec, guard: Guard = unguarded) -> list[Row]:
    """load_samples(spec, guard), each sample with its row's other columns."""
    rows: list[Row] = []
    for source in sources(spec, guard):
        rows.extend(source_rows(source, spec.max_samples))
    return rows


def training_rows(
    spec: DatasetSpec,
    val_size: float | None = None,
    seed: int | None = None,
    guard: Guard = unguarded,
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
    guard: Guard = unguarded,
) -> list[dict[str, Scalar]]:
    """The other columns of each training sample, by sample index (training_rows)."""
    return [row.fields for row in training_rows(spec, val_size, seed, guard)]


def absolute_spec(spec: DatasetSpec) -> DatasetSpec:
    """The same datasets named so that any working directory reads them: each path item
    replaced by its resolved file, and dataset_dir made absolute (the default filled in) when
    a name is looked up in it (None when every item is a path)."""
    items = [
        item if not is_path(item) else str(path_item(item, spec.directory))
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
    convert = converter(source)
    read = {name for name in vars(source.columns).values() if name is not None}
    found, bad = [], []
    for where, row in rows[:max_samples]:
        try:
            found.append(Row(convert(row), extra_fields(row, read)))
        except RowProblem as problem:
            bad.append((where, str(problem)))
    if bad:
        where, reason = bad[0]
        count = "1 row" if len(bad) == 1 else f"{len(bad)} rows"
        entry = ", or correct the entry's columns and tags" if source.entry else ""
        raise DatasetError(
            f"{source.label}: {count} cannot be read as {source.formatting} samples, the "
            f"first at {where}: {reason}. Reading with {_mapping_text(source)}. Both "
            "services must read the same samples, so no row is skipped: fix or remove these "
            f"rows{entry}{_csv_note(source)}"
        )
    return found


def _csv_note(source: Source) -> str:
    """How a csv file's cells are read, for a message about its rows."""
    if not any(file_kind(path) == "csv" for path in source.files):
        return ""
    return (
        ". In a csv file an empty cell (or one the loader reads as missing: NA, N/A, null, "
        "NaN, None) is a missing value, and a column whose cells are all numbers holds numbers, "
        "not text: fill the cells, or store the data as .json or .parquet with text values"
    )


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
    """(where, row) for each row of a data file, read by its kind (file_kind)."""
    kind = file_kind(path)
    return read_json_rows(path) if kind == "json" else read_table_rows(path, kind)


def read_json_rows(path: Path) -> list[tuple[str, Any]]:
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


# The `datasets` loader's message for a file of no rows (a csv of a header only, say).
_NO_ROWS = "corresponds to no data"
# One file is loaded at a time: progress bars are switched off process-wide while it is.
_loading = threading.Lock()


def read_table_rows(path: Path, loader: str) -> list[tuple[str, Any]]:
    """(where, row) for each row of a csv, parquet or arrow file, read by the `datasets`
    loader of that name; where is "PATH row i", from 0 (a csv's header is not a row). A null
    cell is left out of its row."""
    return [
        (f"{path} row {i}", {k: v for k, v in row.items() if not _is_null(v)})
        for i, row in enumerate(_load_table(path, loader))
    ]


def _load_table(path: Path, loader: str) -> list[dict[str, Any]]:
    """The rows of one local file, as the `datasets` library's loader reads them; what the
    loader writes goes to a temporary folder, removed before this returns."""
    import datasets  # slow to import: only when such a file is read

    pattern = glob.escape(str(path))  # data_files are patterns: match this file alone
    with _loading, _no_progress_bars(datasets), tempfile.TemporaryDirectory() as cache:
        try:
            table = datasets.load_dataset(
                loader, data_files=[pattern], split="train", cache_dir=cache, keep_in_memory=True
            )
        except Exception as exc:  # the loader's errors are of many kinds: each is named
            if _NO_ROWS in str(exc):
                return []
            raise DatasetError(
                f"{path} cannot be read as a {loader} file ({_root_cause(exc)}); check that "
                f"it is one, or store the data as another of the kinds read ({KINDS_TEXT})"
            ) from exc
        rows: list[dict[str, Any]] = table.to_list()
        return rows


@contextmanager
def _no_progress_bars(datasets: Any) -> Iterator[None]:
    """The loader's progress bars off while loading (back on after, if they were on)."""
    were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.utils.enable_progress_bars()


def _root_cause(exc: BaseException) -> str:
    """The first error of a chain of errors, as "Type: message"."""
    cause = exc.__cause__ or exc.__context__
    return _root_cause(cause) if cause is not None else f"{type(exc).__name__}: {exc}"


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
