"""The repository stands on its own: every file its documents name is in it, and none of them
points outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Paths named in backticks or links: anything under one of the repository's own folders.
FOLDERS = ("kpi_service/", "sql/", "docs/", "bench/", "tests/", ".ci/")
_LINK = re.compile(r"\]\(([^)#\s]+)")
_CODE = re.compile(r"`([^`\s]+)`")


def named_paths(text: str) -> set[str]:
    found = {m for m in _LINK.findall(text) if "://" not in m}
    found |= {m for m in _CODE.findall(text) if m.startswith(FOLDERS)}
    # A path may end in punctuation of the sentence, or name a function after a colon.
    return {re.split(r"[:,;]", m.rstrip(".)"))[0] for m in found if not any(c in m for c in "<>*{}$")}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_file_a_document_names_is_in_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    missing = sorted(p for p in named_paths(text) if not (ROOT / p).exists() and not (document.parent / p).exists())
    assert not missing, f"{document.name} names files the repository lacks: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_no_document_points_outside_the_repository(document: Path) -> None:
    assert "../" not in document.read_text(encoding="utf-8")


def test_the_readme_links_the_definitions() -> None:
    assert "(docs/kpis.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_owners_page_lists_every_object_the_service_installs() -> None:
    """docs/database-owner.md, Everything the service installs, names each object of sql/schema/manifest.sql."""
    from kpi_service.db.sql import sql_text

    page = (ROOT / "docs" / "database-owner.md").read_text(encoding="utf-8")
    section = page[page.index("## Everything the service installs") :]
    manifest = sql_text("schema/manifest.sql")
    names = re.findall(r"\('(?:function|view|table|index|trigger)', '([^']+)'", manifest)
    assert len(names) > 50
    missing = [name for name in names if f"`{name}`" not in section]
    assert not missing, f"docs/database-owner.md, Everything the service installs, does not list {missing}"
