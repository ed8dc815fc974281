"""The layout rules of docs/developing/architecture.md, checked on the source tree itself:
files ≤ 450 lines, functions ≤ 80 lines, imports only from a module's own layer or lower ones,
no import cycle among module-level imports, and torch/matplotlib only where they belong."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "opcircuits"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80

# Lowest first. A module may import its own layer and lower ones; the first matching prefix wins.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (
        0,
        (
            "errors",
            "files",
            "scratch",
            "jsonable",
            "progress",
            "versions",
            "markdown",
            "options",
            "proportions",
        ),
    ),
    (1, ("data",)),
    (2, ("store", "codi")),
    (3, ("analysis",)),
    (4, ("report",)),
    (5, ("extract", "intervene")),
    (6, ("pipeline",)),
    (7, ("cli", "cli_options", "__init__", "__main__")),
]
# Pairs within a layer that must not import each other (a model never imports its loader).
FORBIDDEN = [("codi.model", "codi.checkpoint"), ("codi.model", "codi.hub"), ("analysis", "codi")]
# Third-party packages confined to some layers.
CONFINED = {"torch": ("codi", "extract", "intervene"), "matplotlib": ("report",)}


def modules() -> dict[str, Path]:
    """Dotted name below `opcircuits` (e.g. `codi.model`, `store` for a package) → file."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int:
    for layer, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and architecture.md")


def imports(path: Path, *, top_level_only: bool = False, root: Path = SRC) -> list[tuple[str, int]]:
    """(imported name, line) for every import of the file; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        pkg = pkg.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + [base])
                base = base.rstrip(".")
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif top_level_only and isinstance(node, ast.If | ast.Try):
            found += [
                (name, line)
                for child in ast.walk(node)
                if isinstance(child, ast.Import | ast.ImportFrom)
                for name, line in _names(child)
            ]
    return found


def _names(node: ast.Import | ast.ImportFrom) -> list[tuple[str, int]]:
    if isinstance(node, ast.Import):
        return [(a.name, node.lineno) for a in node.names]
    return [(node.module or "", node.lineno)]


def internal(name: str, known: dict[str, Path]) -> str | None:
    """The opcircuits module an imported name refers to (longest known prefix), or None."""
    if not name.startswith("opcircuits."):
        return None  # `from opcircuits import x` is judged by `opcircuits.x` below
    parts = name.removeprefix("opcircuits.").split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    # `from opcircuits import run`: a name of the front door, not a module
    return "__init__" if len(parts) == 1 else None


def test_files_and_functions_are_short():
    long_files, long_functions = [], []
    for module, path in modules().items():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_FILE_LINES:
            long_files.append(f"{module} ({lines} lines)")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name} ({length} lines)")
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_imports_go_down_the_layers():
    known = modules()
    wrong = []
    for module, path in known.items():
        here = layer_of(module)
        for name, line in imports(path):
            target = internal(name, known)
            if target is None or target == module:
                continue
            if layer_of(target) > here:
                wrong.append(f"{path.relative_to(SRC)}:{line} {module} → {target}")
            if (module, target) in FORBIDDEN or any(
                module.startswith(a) and target.startswith(b) for a, b in FORBIDDEN
            ):
                wrong.append(f"{path.relative_to(SRC)}:{line} {module} must not import {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle_at_module_level():
    known = modules()
    graph = {
        module: {
            t
            for name, _ in imports(path, top_level_only=True)
            if (t := internal(name, known)) is not None and t != module
        }
        for module, path in known.items()
    }
    # A package's module-level import of its own submodule (re-exports) is not a cycle.
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_heavy_packages_stay_in_their_layers():
    wrong = []
    for module, path in modules().items():
        for name, line in imports(path):
            top = name.split(".")[0]
            allowed = CONFINED.get(top)
            if allowed and not any(module == a or module.startswith(a + ".") for a in allowed):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {top}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    """The checker itself: an upward import (also a relative one) in a throwaway tree is found."""
    root = tmp_path / "opcircuits"
    bad = root / "data" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from opcircuits.report import figures\nfrom ..report import render\n")
    known = {"report.figures": bad, "report.render": bad, "data.bad": bad}
    found = {internal(n, known) for n, _ in imports(bad, root=root)}
    assert {"report.figures", "report.render"} <= found
    assert all(layer_of(t) > layer_of("data.bad") for t in found - {None})
