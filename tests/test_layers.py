"""The package's layers import one way: read from the source, every import counted.

Each module's imports are parsed from its source (imports inside functions and under
``TYPE_CHECKING`` included), so a cycle cannot hide from this check behind an import
that only runs later.  CONTRIBUTING.md describes the layers.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "sanic_sqlalchemy"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE

#: Bottom to top: a module may import its own part and the parts of lower layers only.
#: Parts of one layer are independent of each other.
LAYERS: list[set[str]] = [
    {"_keys", "_lookup", "errors", "hooks"},
    {"settings"},
    {"insight", "readonly", "replicas", "cluster"},
    {"engine"},
    {"unit"},
    {"retry"},
    {"tasks"},
    {"listeners"},
    {"database"},
    {"sanic"},
    {"testing", "cli", "__init__"},
    {"__main__"},
]
#: The longest a module may grow before it is split by what it does.
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> Iterator[str]:
    """The package's modules that ``name`` imports, wherever in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from . import x`` imports the module x when there is one.
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                yield target


GRAPH = {name: sorted(set(imports_of(name))) for name in MODULES}


def part(name: str) -> str:
    """The top-level part of the package a module belongs to (``unit``, ``sanic``…)."""
    rest = name.removeprefix(PACKAGE).lstrip(".")
    return rest.split(".")[0] if rest else "__init__"


def layer(name: str) -> int:
    top = part(name)
    for index, parts in enumerate(LAYERS):
        if top in parts:
            return index
    raise AssertionError(f"{name} belongs to no layer: add its part to LAYERS")


def test_no_import_cycle() -> None:
    """No module imports itself through other modules, counting every import."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in GRAPH[name]:
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in GRAPH:
        if name not in state:
            visit(name)


def test_imports_point_down_the_layers() -> None:
    """A module imports only its own part of the package and lower layers."""
    wrong = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in GRAPH.items()
        for target in targets
        if part(target) != part(name) and layer(target) >= layer(name)
    ]
    assert not wrong, "\n".join(wrong)


def test_only_the_sanic_package_imports_sanic() -> None:
    """The core knows no web framework: Sanic and sanic-ext are imported in
    ``sanic_sqlalchemy.sanic`` only."""
    wrong = []
    for name, path in MODULES.items():
        if part(name) == "sanic":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            wrong += [f"{name}: {n}" for n in names if n.split(".")[0] in ("sanic", "sanic_ext")]
    assert not wrong, "\n".join(wrong)


def test_no_module_is_too_long() -> None:
    """Every module has at most MAX_LINES lines: a longer one has several jobs."""
    long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_every_layer_part_exists() -> None:
    """LAYERS names only parts that exist, so the check cannot rot silently."""
    existing = {part(name) for name in MODULES}
    missing = set().union(*LAYERS) - existing
    assert not missing, missing


if __name__ == "__main__":  # python tests/test_layers.py: the graph, bottom first
    for name in sorted(GRAPH, key=lambda n: (layer(n), n)):
        sys.stdout.write(f"{layer(name)} {name}: {', '.join(GRAPH[name]) or '-'}\n")
