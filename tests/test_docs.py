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


def test_each_kpis_direction_is_the_one_docs_kpis_md_defines() -> None:
    """The "better" column of docs/kpis.md is the definition; the code (serving/responses.py,
    BETTER) and the OpenAPI document (x-better) state the same."""
    from kpi_service.serving.responses import BETTER, KpiValuesSchema

    rows = re.findall(
        r"^\| `([a-z_]+)` \| (higher|lower) \|", (ROOT / "docs/kpis.md").read_text(encoding="utf-8"), re.M
    )
    assert dict(rows) == BETTER
    assert set(BETTER) == set(KpiValuesSchema().fields)
    stated = {name: field.metadata["x-better"] for name, field in KpiValuesSchema().fields.items()}
    assert stated == BETTER


def test_the_owners_page_lists_every_object_the_service_installs() -> None:
    """docs/database-owner.md, Everything the service installs, names each object of sql/schema/manifest.sql."""
    from kpi_service.db.sql import sql_text

    page = (ROOT / "docs" / "database-owner.md").read_text(encoding="utf-8")
    section = page[page.index("## Everything the service installs") :]
    manifest = sql_text("schema/manifest.sql")
    names = re.findall(r"\('(?:function|view|table|index|trigger)', '([^']+)'", manifest)
    # (The indexes on the sales tables, named with that schema's name as init-db finds it.)
    names += [f"public.{name}" for name in re.findall(r"\('index', s\.sales \|\| '\.([^']+)'", manifest)]
    assert len(names) > 50
    missing = [name for name in names if f"`{name}`" not in section]
    assert not missing, f"docs/database-owner.md, Everything the service installs, does not list {missing}"


# One home per fact: what the documents name exists, and what the code has is documented.
# Fast and static: the code is read as text, nothing is imported but the SQL loader.

PACKAGE = ROOT / "kpi_service"
CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"
CLIENTS = ROOT / "docs" / "clients.md"
_DOTTED = re.compile(r"\bkpi_service(?:\.[A-Za-z_]\w*)+")
_SHORT_MODULE = re.compile(r"`((?:web|serving|db|live|ops|cli)/\w+\.py)")
_SETTING = re.compile(r"(?<![\w-])((?:KPI|DATABASE|REDIS|JWT|GUNICORN|PROMETHEUS)_[A-Z0-9_]*[A-Z0-9]|PORT)(?![\w-])")
_METRIC = re.compile(r"\bkpi_[a-z_]+_(?:total|seconds)\b")
# A setting read as env.get("NAME"), _int(env, "NAME", ...), os.environ.get("NAME") or os.environ["NAME"].
_READ = re.compile(
    r"""(?:env\.get|environ\.get|_int)\((?:env,\s*)?["']([A-Z][A-Z0-9_]+)["']|environ\[["']([A-Z][A-Z0-9_]+)["']\]"""
)


def _texts(*paths: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in paths)


def service_settings() -> set[str]:
    """What Settings.from_env and gunicorn.conf.py read from the environment."""
    found = set()
    for match in _READ.finditer(_texts(PACKAGE / "config.py", ROOT / "gunicorn.conf.py")):
        found.add(match.group(1) or match.group(2))
    return found


def other_settings() -> set[str]:
    """Names read by the rest of the repository (tests, benchmarks, compose, CI), which the
    documents may name too: KPI_TEST_DATABASE_URL, KPI_DB_PASSWORD, ..."""
    names: set[str] = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        names |= set(_SETTING.findall(path.read_text(encoding="utf-8")))
    for path in [ROOT / "docker-compose.yml", ROOT / "Dockerfile", ROOT / "Makefile", *(ROOT / ".ci").glob("*")]:
        if path.is_file():
            names |= set(_SETTING.findall(path.read_text(encoding="utf-8")))
    return names


def metric_names() -> set[str]:
    """The names given to prometheus_client's Counter, Histogram and Gauge in ops/metrics.py."""
    text = (PACKAGE / "ops" / "metrics.py").read_text(encoding="utf-8")
    return set(re.findall(r"(?:Counter|Histogram|Gauge)\(\s*\"(kpi_\w+)\"", text))


def cache_outcomes() -> set[str]:
    """The outcomes the serving code gives a Served: its second argument, a literal or a choice of two."""
    found: set[str] = set()
    for path in (PACKAGE / "serving").glob("*.py"):
        for call in re.findall(r"Served\(([^\n]*)", path.read_text(encoding="utf-8")):
            found |= set(re.findall(r"\"(\w+)\"", call))
    return found


def documented_outcomes() -> list[str]:
    """The rows of clients.md's table "Cache outcomes", the outcomes' one home."""
    text = CLIENTS.read_text(encoding="utf-8")
    section = text[text.index("### Cache outcomes") :]
    section = section[: section.index("\n#")]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def logger_names() -> set[str]:
    """Loggers named otherwise than their module (kpi_service.request)."""
    return {
        m
        for p in PACKAGE.rglob("*.py")
        for m in re.findall(r"getLogger\(\"([\w.]+)\"\)", p.read_text(encoding="utf-8"))
    }


def _module_exists(dotted: str) -> bool:
    """kpi_service.a.b[.attribute]: a module or package, optionally followed by a name it defines,
    or a logger's name."""
    if dotted in logger_names():
        return True
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"
        if module.is_file():
            rest = parts[cut:]
            if not rest:
                return True
            source = module.read_text(encoding="utf-8")
            return bool(re.search(rf"^(?:def|class) {rest[0]}\b|^{rest[0]}\b.*=", source, flags=re.MULTILINE))
    return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_module_a_document_names_exists(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    dotted = {m for m in _DOTTED.findall(text) if not _module_exists(m)}
    short = {m for m in _SHORT_MODULE.findall(text) if not (PACKAGE / m).is_file()}
    assert not dotted | short, f"{document.name} names modules that do not exist: {sorted(dotted | short)}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_setting_a_document_names_is_read(document: Path) -> None:
    known = service_settings() | other_settings()
    unknown = sorted(set(_SETTING.findall(document.read_text(encoding="utf-8"))) - known)
    assert not unknown, f"{document.name} names settings no code reads: {unknown}"


def test_configuration_names_every_setting_the_service_reads() -> None:
    settings = service_settings()
    assert {"DATABASE_URL", "KPI_CACHE_TTL", "GUNICORN_THREADS", "PORT"} <= settings  # the scan works
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", CONFIGURATION.read_text(encoding="utf-8"), flags=re.MULTILINE))
    missing = sorted(settings - rows)
    assert not missing, f"docs/configuration.md has no row for {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_metric_a_document_names_exists(document: Path) -> None:
    unknown = sorted(set(_METRIC.findall(document.read_text(encoding="utf-8"))) - metric_names())
    assert not unknown, f"{document.name} names metrics ops/metrics.py does not define: {unknown}"


def test_operations_lists_every_metric() -> None:
    metrics = metric_names()
    assert len(metrics) >= 10  # the scan works
    text = OPERATIONS.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(kpi_\w+)` \|", text, flags=re.MULTILINE))
    assert not metrics - rows, f"docs/operations.md, Metrics, has no row for {sorted(metrics - rows)}"


def test_the_cache_outcomes_are_documented_both_ways() -> None:
    code = cache_outcomes()
    assert {"hit", "miss"} <= code  # the scan works
    documented = documented_outcomes()
    assert len(documented) == len(set(documented))
    assert set(documented) == code, f"docs/clients.md lists {sorted(documented)}, the code has {sorted(code)}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_a_list_of_cache_outcomes_is_the_whole_list(document: Path) -> None:
    """Wherever a document lists outcomes in a row (`hit`, `miss` or `stale`), it lists them all."""
    code = cache_outcomes()
    text = document.read_text(encoding="utf-8")
    for run in re.findall(r"(?:`\w+`(?:, | or | and |, or |, and )){1,}`\w+`", text):
        names = set(re.findall(r"`(\w+)`", run))
        if len(names & code) >= 2:
            assert code <= names, f"{document.name} lists cache outcomes {sorted(names)}, not {sorted(code)}: {run}"


def test_the_openapi_text_names_every_cache_outcome() -> None:
    """The Server-Timing header's description in the OpenAPI document spells the outcomes out."""
    text = (PACKAGE / "web" / "openapi.py").read_text(encoding="utf-8")
    named = set(re.search(r"cache;desc=([\w|]+)", text).group(1).split("|"))
    assert named == cache_outcomes(), f"kpi_service/web/openapi.py names {sorted(named)}"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_to_a_section_finds_it(document: Path) -> None:
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", document.read_text(encoding="utf-8")):
        path = document if not target else document.parent / target
        if anchor not in _anchors(path):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{document.name} links to sections that do not exist: {broken}"


def test_every_document_the_code_points_to_exists() -> None:
    """Comments, docstrings and the OpenAPI text link to a document instead of restating it."""
    sources = [*PACKAGE.rglob("*.py"), ROOT / "gunicorn.conf.py", *(ROOT / "sql").rglob("*.sql")]
    named = {(p.name, d) for p in sources for d in re.findall(r"\bdocs/[\w-]+\.md", p.read_text(encoding="utf-8"))}
    assert named  # the scan works
    missing = sorted((source, doc) for source, doc in named if not (ROOT / doc).is_file())
    assert not missing, f"code points to documents the repository lacks: {missing}"
