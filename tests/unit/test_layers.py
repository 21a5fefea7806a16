"""The architecture's rules, read from the source (ast, nothing imported): each test fails when a rule breaks.

- model imports only the standard library and dashboard.exceptions (test_model_purity.py checks it at run time);
- services never imports Flask, nor the web layer;
- config imports neither services nor web;
- web never imports the package root (create_app is the composition root's, dashboard/app.py);
- no import cycles anywhere in dashboard/, counting imports inside functions too (a lazy import hides a loop,
  it does not remove it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dashboard"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> Iterator[tuple[str, bool]]:
    """(imported module, at module level?) for every import in module `name`, relative ones resolved.

    `from x import y` counts as importing x.y when that is a dashboard module, else x; imports under
    `if TYPE_CHECKING:` are left out (they never run).
    """
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_checking = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
                     and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING"
                     for node in ast.walk(stmt)}
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                target = f"{source}.{alias.name}"
                yield (target if target in MODULES else source), id(node) in top_level


def dashboard_imports(name: str) -> set[str]:
    return {target for target, _ in imports_of(name) if target in MODULES and target != name}


def in_layer(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def layer_modules(layer: str) -> list[str]:
    return [name for name in MODULES if in_layer(name, layer)]


def test_the_layers_are_found() -> None:
    for layer in ("dashboard.model", "dashboard.services", "dashboard.web", "dashboard.serving"):
        assert layer_modules(layer), layer
    assert "dashboard.app" in MODULES and "dashboard.config" in MODULES


@pytest.mark.parametrize("name", layer_modules("dashboard.model"))
def test_model_imports_only_the_standard_library_and_itself(name: str) -> None:
    import sys

    allowed = {"dashboard.exceptions"}
    for target, _ in imports_of(name):
        top = target.split(".")[0]
        if top == "dashboard":
            assert in_layer(target, "dashboard.model") or target in allowed, f"{name} imports {target}"
        else:
            assert top in sys.stdlib_module_names or top == "__future__", f"{name} imports {target}"


@pytest.mark.parametrize("name", layer_modules("dashboard.services"))
def test_services_never_import_flask_or_the_web_layer(name: str) -> None:
    for target, _ in imports_of(name):
        assert target.split(".")[0] not in ("flask", "werkzeug", "flask_sock"), f"{name} imports {target}"
        assert not in_layer(target, "dashboard.web"), f"{name} imports {target}"
        assert not in_layer(target, "dashboard.serving") and target != "dashboard.app", f"{name} imports {target}"


def test_config_imports_neither_services_nor_web() -> None:
    for target in dashboard_imports("dashboard.config"):
        assert not in_layer(target, "dashboard.services") and not in_layer(target, "dashboard.web"), target


@pytest.mark.parametrize("name", layer_modules("dashboard.web"))
def test_web_never_imports_the_package_root_or_the_composition_root(name: str) -> None:
    for target, _ in imports_of(name):
        assert target not in ("dashboard", "dashboard.app"), f"{name} imports {target}"


def find_cycle() -> list[str] | None:
    graph = {name: dashboard_imports(name) for name in MODULES}
    # a package's __init__ importing its own submodules is how packages re-export; it is not a loop back
    for name in MODULES:
        if MODULES[name].name == "__init__.py":
            graph[name] = {target for target in graph[name] if not in_layer(target, name)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(MODULES):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_import_cycles_in_the_package() -> None:
    cycle = find_cycle()
    assert cycle is None, " -> ".join(cycle or [])
