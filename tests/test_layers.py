"""The package's layers hold: no import against the layer order, and no import cycle.

Every import in every module of `mvc/` counts, including those inside functions: a lazy
import still ties the two modules together, and only defers the cost. Imports under
`TYPE_CHECKING` count for the layer order (a type names what a module depends on) but not
for cycles, since they never run: a module of `mvc/repo` may name `Repo` in its hints while
`Repo` delegates to it. The order is the one docs/architecture.md describes: the demo application sits on
the library and below the CLI, which exposes it as `mvc demo`. The package's own
`__init__` is the Python API's front door and `__main__` the CLI's (`python -m mvc`): both
may name any layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mvc"
LAYERS = (
    "formats",
    "store",
    "repo",
    "merge",
    "lineage",
    "lock",
    "remote",
    "gitdriver",
    "demo",
    "cli",
)
LAYER_FREE = ("errors", "progress", "memory", "files", "lazy", "tuning")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typing: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`; with `typing` False, none under TYPE_CHECKING."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif typing or not _is_type_checking(node):
            yield from _imports(node, typing)


def imported_modules(path: Path, known: set[str], typing: bool) -> set[str]:
    """The mvc modules `path` imports (`from mvc.x import y` names mvc.x.y when that is a
    module, else mvc.x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path)), typing):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        for alias in node.names:
            child = f"{source}.{alias.name}"
            found.add(child if child in known else source)
    return {m for m in found if m == "mvc" or m.startswith("mvc.")}


def import_graph(typing: bool = True) -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known, typing) - {module_name(p)} for p in paths}


def top(module: str) -> str:
    """The package (or layer-free module) directly under mvc; "" for mvc itself."""
    return module.split(".")[1] if "." in module else ""


def rank(module: str) -> int | None:
    """The layer index of a module; None for the layer-free ones, the package itself and
    its `__main__`."""
    if top(module) in LAYER_FREE or top(module) in ("", "__main__"):
        return None
    assert top(module) in LAYERS, f"{module} belongs to no layer; add its package to LAYERS"
    return LAYERS.index(top(module))


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, imports in import_graph().items():
        for target in imports:
            mine, theirs = rank(module), rank(target)
            if top(module) in LAYER_FREE and top(target) not in LAYER_FREE:
                wrong.append(f"{module} (layer-free) imports {target}")
            elif mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{module} imports {target}, a higher layer")
    assert not wrong, "\n".join(sorted(wrong))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as the modules along it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph(typing=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "cyclic"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, True),
    ],
)
def test_cycle_finder(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic
