"""The package's module graph: no import cycle anywhere in `ssl_jax/`,
function-local imports included (a lazy import hides a loop from Python, not
from a reader)."""

import ast
import pathlib

import ssl_jax

ROOT = pathlib.Path(ssl_jax.__file__).parent


def module_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its source."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` up
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                imported |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in imported if m in names and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_finds_a_cycle_through_a_function_local_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (package / "c.py").write_text("from . import a\n")
    assert find_cycle(module_graph(package)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("import os\n")
    assert find_cycle(module_graph(package)) is None


def test_ssl_jax_has_no_import_cycle():
    graph = module_graph(ROOT)
    assert "ssl_jax.data.datasets" in graph and "ssl_jax.data.base" in graph["ssl_jax.data.text"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
