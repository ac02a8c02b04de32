"""Alpaca-format instruction data: a JSON or JSONL file, or a name in dataset_info.json."""

from __future__ import annotations

import json
from pathlib import Path

ALPACA_KEYS = ("instruction", "input", "output")


class DatasetError(ValueError):
    """The dataset cannot be found or read (the message says which file and why)."""


def resolve_dataset(dataset: str, dataset_dir: str | Path | None = None) -> Path:
    """A path to a .json/.jsonl file, or a name looked up in dataset_dir/dataset_info.json."""
    as_path = Path(dataset).expanduser()
    if as_path.suffix in (".json", ".jsonl") and as_path.is_file():
        return as_path.resolve()
    if dataset_dir is not None:
        base = Path(dataset_dir).expanduser()
        candidate = base / dataset
        if candidate.suffix in (".json", ".jsonl") and candidate.is_file():
            return candidate.resolve()
        info_path = base / "dataset_info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            entry = info.get(dataset)
            if isinstance(entry, dict) and "file_name" in entry:
                found = base / entry["file_name"]
                if found.is_file():
                    return found.resolve()
                raise DatasetError(
                    f"dataset '{dataset}' is listed in {info_path} as {entry['file_name']}, "
                    f"but {found} does not exist"
                )
    where = f" or a name in {Path(dataset_dir) / 'dataset_info.json'}" if dataset_dir else ""
    raise DatasetError(
        f"dataset '{dataset}' is neither an existing .json/.jsonl file{where}; "
        "give a path to an alpaca-format file, or set dataset_dir"
    )


def load_alpaca(path: str | Path) -> list[dict[str, str]]:
    """Read samples with instruction, input (optional) and output, in file order."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"{path} must hold a non-empty list of samples")
    samples = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "instruction" not in row or "output" not in row:
            raise DatasetError(
                f"{path}: sample {i} needs the keys 'instruction' and 'output' (alpaca format)"
            )
        samples.append({key: str(row.get(key) or "") for key in ALPACA_KEYS})
    return samples
