"""How the package is put together: dependencies run one way, and what sits on top (the command
line, the benchmarks) uses only what the library offers publicly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.one_backend

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_dae"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(path: Path) -> set[str]:
    """The keras_dae modules that `path` imports anywhere (at the top or inside a function):
    `from a.b import c` counts as `a.b.c` when that is a module, else as `a.b`."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(dotted: str) -> str | None:
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {known(a.name) for a in node.names if a.name.startswith("keras_dae")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("keras_dae"):
                found |= {known(f"{base}.{a.name}") if f"{base}.{a.name}" in MODULES
                          else known(base) for a in node.names}
    return found - {None, name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    """Every import counts, also those inside functions (a lazy import is still a
    dependency); a package's `__init__` is not counted as a dependency of its submodules."""
    graph = {name: _imported(path) for name, path in MODULES.items()}
    assert _cycles(graph) == []
    # The check sees a cycle where there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_in_the_package_imports_the_command_line():
    importers = sorted(name for name, path in MODULES.items()
                       if "keras_dae.cli" in _imported(path)
                       and name not in ("keras_dae.cli", "keras_dae.__main__"))
    assert importers == []


def test_the_command_line_is_thin():
    """cli.py parses, calls the library and prints: under 400 lines, and none of its commands
    reads a dataset or writes a file itself (no open(), no write_text/np.save of its own)."""
    source = (ROOT / "keras_dae" / "cli.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 400
    calls = {node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
             for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and isinstance(node.func, (ast.Attribute, ast.Name))}
    assert not calls & {"open", "write_bytes", "save", "savez", "savez_compressed", "read_csv"}


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmarks_use_the_public_api_and_leave_sys_path_alone(script):
    tree = ast.parse((ROOT / "benchmarks" / script).read_text(encoding="utf-8"))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_dae"):
            if node.module == "keras_dae.cli":
                problems.append(f"line {node.lineno}: imports keras_dae.cli")
            problems += [f"line {node.lineno}: imports the private {a.name}"
                         for a in node.names if a.name.startswith("_")]
        if (isinstance(node, ast.Attribute) and node.attr == "path"
                and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            problems.append(f"line {node.lineno}: uses sys.path")
    assert problems == []
