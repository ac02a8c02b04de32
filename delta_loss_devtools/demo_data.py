"""A generated demo dataset: short instruction/response pairs from tasks of different
difficulty, plus a share whose response is random noise, so the selection has something to
find. Each row carries its `group` (alpaca readers ignore the extra key).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path

WORDS = [
    *("apple", "river", "stone", "cloud", "green", "tiger", "paper", "light", "music", "house"),
    *("water", "bread", "night", "chair", "smile", "table", "plant", "storm", "dream", "ocean"),
]

Task = Callable[[random.Random], tuple[str, str]]


def _copy(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Repeat the word: {word}", word


def _upper(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Write in capitals: {word}", word.upper()


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Reverse the letters: {word}", word[::-1]


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"Add {a} and {b}.", str(a + b)


TASKS: dict[str, Task] = {"copy": _copy, "upper": _upper, "reverse": _reverse, "add": _add}


def _noise(rng: random.Random) -> tuple[str, str]:
    instruction, _ = rng.choice(list(TASKS.values()))(rng)
    alphabet = string.ascii_letters + string.digits + string.punctuation
    return instruction, "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 12)))


def make_samples(n: int = 320, noise_share: float = 0.2, seed: int = 0) -> list[dict[str, str]]:
    """n rows, a noise_share of them noise, the rest spread evenly over the tasks, shuffled."""
    rng = random.Random(seed)
    n_noise = round(n * noise_share)
    groups = [name for i, name in zip(range(n - n_noise), _cycle(list(TASKS)), strict=False)]
    groups += ["noise"] * n_noise
    rng.shuffle(groups)
    rows = []
    for group in groups:
        instruction, output = (_noise if group == "noise" else TASKS[group])(rng)
        rows.append({"instruction": instruction, "input": "", "output": output, "group": group})
    return rows


def _cycle(names: list[str]):
    while True:
        yield from names


def write_dataset(path: str | Path, **kwargs) -> Path:
    """Write make_samples(**kwargs) as alpaca JSON; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_samples(**kwargs), indent=1) + "\n", encoding="utf-8")
    return path


def groups_of(path: str | Path) -> list[str]:
    return [row.get("group", "?") for row in json.loads(Path(path).read_text(encoding="utf-8"))]
