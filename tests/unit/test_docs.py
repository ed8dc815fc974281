"""The README stays a short front page with its two set-up commands, and no link in the README or
the docs points at a file that does not exist (`mkdocs build --strict` checks the docs' links
between pages too, in CI; this also covers the README and links out of docs/)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"

SET_UP = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    'pip install -e ".[dev]" && opcircuits run --mode prototype --data ../shared/data/gsm8k'
)
TEST = "python -m pytest -q"
# [text](target) not inside code; the target up to a space, `)` or `#`.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _bash_blocks(text: str) -> list[list[str]]:
    return [b.strip().splitlines() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def _without_code(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _relative_links(path: Path) -> list[str]:
    links = LINK.findall(_without_code(path.read_text(encoding="utf-8")))
    return [t for t in links if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_is_at_most_150_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_readme_set_up_commands_are_the_two_documented_ones():
    blocks = _bash_blocks(README.read_text(encoding="utf-8"))
    assert blocks[0] == [SET_UP], "the first bash block is the one-line set-up and quick start"
    assert [TEST] in blocks, "the test command has a bash block of its own"


def test_every_relative_link_points_at_an_existing_file():
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    assert len(pages) > 10
    broken = []
    for page in pages:
        for target in _relative_links(page):
            file = target.split("#", 1)[0]
            if not (page.parent / file).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_every_docs_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    listed = set(re.findall(r":\s*([\w/-]+\.md)\s*$", nav, re.M))
    assert pages == listed
