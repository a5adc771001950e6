"""The shape of the code, read from the source: no import cycles, small modules, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "superscalar_plugin"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
NOT_YET: set[str] = set()  # modules exempted while someone splits them (none now)


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports (anywhere in the file, TYPE_CHECKING included)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        if m in stack:
            return [*stack[stack.index(m) :], m]
        if m in done:
            return None
        stack.append(m)
        for dep in sorted(graph[m]):
            found = visit(dep)
            if found:
                return found
        stack.pop()
        done.add(m)
        return None

    for m in sorted(graph):
        found = visit(m)
        if found:
            return found
    return None


def test_the_import_graph_is_read() -> None:
    graph = _graph()
    assert "superscalar_plugin.engine.musig2" in graph["superscalar_plugin.engine.ceremony"]
    assert (
        "superscalar_plugin.plugin.lightningd.records"
        in graph["superscalar_plugin.plugin.onchain.duties"]
    )
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    assert _cycle(_graph()) is None


def test_the_engine_never_imports_upward() -> None:
    for name, deps in _graph().items():
        if name.startswith("superscalar_plugin.engine"):
            upward = {d for d in deps if not d.startswith("superscalar_plugin.engine")}
            assert not upward, f"{name} imports {sorted(upward)}"


def test_modules_are_small() -> None:
    big = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES and rel not in NOT_YET:
            big[rel] = lines
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_functions_are_short() -> None:
    long = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in NOT_YET:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{rel}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
