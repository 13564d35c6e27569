"""README.md, CONTRIBUTING.md and docs/: links that resolve, code blocks that say their language.

Shell is `sh`, which tests/functional/test_docs.py runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """Return the anchors GitHub makes of a page's headings."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no such heading")
    assert broken == []


def test_every_docs_page_is_reachable_from_the_index():
    index = (REPO / "docs/index.md").read_text()
    linked = {
        (REPO / "docs" / target.partition("#")[0]).resolve() for target in LINK.findall(index)
    }
    pages = {page.resolve() for page in (REPO / "docs").rglob("*.md")} - {REPO / "docs/index.md"}
    assert sorted(map(str, pages - linked)) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_code_block_says_its_language(page):
    languages = re.findall(r"^```(\w*)\n.*?^```", page.read_text(), re.M | re.S)
    assert [lang for lang in languages if lang in ("", "bash", "shell", "shell-session")] == []
