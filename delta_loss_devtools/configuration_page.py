"""docs/CONFIGURATION.md's reference tables, generated from the field descriptions: the scorer's
Settings (what `scorer-svc serve --help` prints) and the trainer's keys (what `trainer-svc keys
--format markdown` prints). `python -m delta_loss_devtools.configuration_page` (`make docs`)
rewrites them in place; `--check` only says whether they are current."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from scorer_svc.config import Settings
from trainer_svc.config import reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "CONFIGURATION.md"


def scorer_settings() -> str:
    """A table of the scorer's settings: name, flag, type, default, meaning."""
    rows = ["| setting | flag | type | default | meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        key = reference.describe(name, field)
        hidden = argparse.SUPPRESS in field.metadata  # CliSuppress: a secret, never a flag
        flag = "none (a secret)" if hidden else f"`--{name.replace('_', '-')}`"
        kind = key.type.replace("SecretStr", "str").replace("Path", "path")
        rows.append(
            f"| `{name}` | {flag} | {reference.cell(kind)} | {reference.cell(key.default)} "
            f"| {reference.cell(key.description)} |"
        )
    return "\n".join(rows) + "\n"


def trainer_keys() -> str:
    """The trainer's keys, a table per group."""
    return reference.as_markdown()


BLOCKS: dict[str, Callable[[], str]] = {
    "scorer-settings": scorer_settings,
    "trainer-keys": trainer_keys,
}


def block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN {re.escape(name)}: .*? -->\n)(.*?)(<!-- END {re.escape(name)} -->)",
        re.DOTALL,
    )


def regenerate(text: str) -> str:
    """The page with every generated block replaced by what the code says now."""
    for name, make in BLOCKS.items():
        pattern = block_pattern(name)
        if not pattern.search(text):
            raise ValueError(f"the page has no block {name!r} (<!-- BEGIN {name}: ... -->)")
        body = make()

        def fill(match: re.Match[str], body: str = body) -> str:
            return match[1] + "\n" + body + "\n" + match[3]

        text = pattern.sub(fill, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--page", type=Path, default=PAGE)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the page's tables are out of date"
    )
    args = parser.parse_args(argv)
    text = args.page.read_text(encoding="utf-8")
    current = regenerate(text)
    if args.check:
        if current != text:
            print(f"{args.page}: the reference tables are out of date: run `make docs`")  # noqa: T201
            return 1
        return 0
    if current != text:
        args.page.write_text(current, encoding="utf-8")
        print(f"{args.page}: reference tables rewritten")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
