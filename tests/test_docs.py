"""The manual holds together: its links and anchors resolve, every scorer setting and trainer
key is documented, and the README stays a short front door that starts with its two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from delta_loss_devtools import configuration_page
from scorer_svc.config import Settings
from trainer_svc.config.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [ROOT / "README.md", ROOT / "RELIABILITY.md", ROOT / "BENCHMARKS.md"]
    + list((ROOT / "docs").glob("*.md"))
)
CONFIGURATION = ROOT / "docs" / "CONFIGURATION.md"
README_MAX_LINES = 250

FENCE = re.compile(r"^ *(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but hyphens dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page's headings make, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match[2])
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> list[str]:
    """The relative link targets of a page (web and mail links left out)."""
    targets = [m[1] for m in LINK.finditer(prose(page.read_text(encoding="utf-8")))]
    return [t for t in targets if not re.match(r"(?i)(https?:|mailto:)", t)]


def test_the_pages_checked_are_there() -> None:
    names = {page.name for page in PAGES}
    for name in ("README.md", "METHOD.md", "CONFIGURATION.md", "LIBRARY.md", "FAILURES.md",
                 "EXPORT.md", "DEVELOPMENT.md", "REST.md", "GPUS.md", "DEPLOY.md",
                 "PROTOCOL.md", "RELIABILITY.md", "BENCHMARKS.md"):  # fmt: skip
        assert name in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading {anchor!r} in {file.name}")
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


def test_the_slug_follows_githubs_rule() -> None:
    assert slug("12. Does it help? Delta Loss against uniform sampling") == (
        "12-does-it-help-delta-loss-against-uniform-sampling"
    )
    assert slug("Does it help on my data?") == "does-it-help-on-my-data"
    assert slug("`docker compose` up") == "docker-compose-up"
    assert slug("Trainer ↔ scorer contract") == "trainer--scorer-contract"
    assert slug("data_dir and **model_root**") == "data_dir-and-model_root"


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "A.md").write_text("# A\n\n## Real heading\n")
    page = tmp_path / "B.md"
    page.write_text(
        "[ok](A.md#real-heading) [gone](Missing.md) [bad](A.md#no-such) [web](https://x.org)\n"
        "```\n[in code](Nowhere.md)\n```\n"
    )
    assert links(page) == ["A.md#real-heading", "Missing.md", "A.md#no-such"]
    assert "real-heading" in anchors(tmp_path / "A.md")
    assert "no-such" not in anchors(tmp_path / "A.md")


def documented(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text) is not None


def test_every_scorer_setting_is_in_the_configuration_page() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if not documented(name, text)]
    assert missing == [], f"scorer settings missing from {CONFIGURATION.name}: {missing}"


def test_every_trainer_key_is_in_the_configuration_page() -> None:
    # TrainConfig forbids extra keys: its fields are the YAML keys the trainer accepts
    assert TrainConfig.model_config.get("extra") == "forbid"
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = [name for name in TrainConfig.model_fields if not documented(name, text)]
    assert missing == [], f"trainer keys missing from {CONFIGURATION.name}: {missing}"


def test_the_configuration_tables_are_generated_from_the_code() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert configuration_page.regenerate(text) == text, "run `make docs`"


def test_the_generated_tables_follow_the_descriptions(tmp_path: Path) -> None:
    page = tmp_path / "CONFIGURATION.md"
    stale = CONFIGURATION.read_text(encoding="utf-8").replace(
        "| `http_port` | `--http-port` | int | 8000 | REST port |",
        "| `http_port` | `--http-port` | int | 9000 | an old text |",
    )
    assert "an old text" in stale
    page.write_text(stale, encoding="utf-8")
    assert configuration_page.main(["--page", str(page), "--check"]) == 1
    assert configuration_page.main(["--page", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == CONFIGURATION.read_text(encoding="utf-8")
    assert configuration_page.main(["--page", str(page), "--check"]) == 0
    # the secret is never offered as a flag, and every trainer group has its table
    assert "| `token` | none (a secret) |" in page.read_text(encoding="utf-8")
    for group in ("Model", "Data", "Training", "Selection", "Scorer"):
        assert f"### {group}\n" in page.read_text(encoding="utf-8")


def test_a_page_without_its_blocks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no block 'scorer-settings'"):
        configuration_page.regenerate("# Configuration\n")


def fenced_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_readme_is_short_and_starts_with_the_demo_and_the_tests() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    blocks = fenced_blocks(text)
    assert blocks, "the README has no code block"
    # the first block holds the two commands a newcomer runs, one a line, the demo first
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"], blocks[0]
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert {"demo", "test"} <= set(targets)
