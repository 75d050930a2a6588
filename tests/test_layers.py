"""The package's folders are layers that import downward only: web -> live -> serving -> db ->
config, with ops (metrics, logs, signals) beside them, importing nothing of the service's but
the settings. The entry points (app.py, cli/, client.py) sit on top. And no module imports
itself back through others, type-only imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "kpi_service"
RANKS = {"config": 0, "db": 1, "serving": 2, "live": 3, "web": 4}
TOP = {"app", "cli", "client", "__init__", "__main__"}


def _imports() -> dict[str, set[str]]:
    """Module -> the kpi_service modules it imports (a package import counts as its __init__)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kpi_service"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    known = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                    found.add(candidate if known else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("kpi_service")}
        graph[module] = found - {module}
    return graph


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_layer_imports_only_the_layers_below_it_and_ops() -> None:
    wrong = []
    for module, imported in sorted(_imports().items()):
        layer = _layer(module)
        for target in sorted(imported):
            below = _layer(target)
            if layer in TOP:
                continue
            if layer == "ops":
                allowed = below in ("ops", "config")
            else:
                allowed = below == "ops" or (below in RANKS and RANKS[below] <= RANKS[layer])
            if not allowed:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_package_has_no_import_circles() -> None:
    graph = _imports()
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []
