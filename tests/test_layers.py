"""mlip's layers: which part of the package may import which (docs/design.md, "Layers").

Every module's imports are read with `ast` (module level and inside functions, absolute and
relative), so an import that only runs when a function is called counts as much as one at the
top. A module may import its own unit and units of a lower rank, never a unit of its own rank
or a higher one; so the graph of units has no cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlip"

# unit -> rank. A unit is a subpackage (mlip.data) or a top-level module (mlip.export); lower
# ranks never import higher ones, and two units of one rank never import each other.
LAYERS: dict[str, int] = {
    "mlip.constants": 0,  # no mlip imports at all
    "mlip.files": 0,
    "mlip.geometry": 0,
    "mlip.performance": 0,
    "mlip.nn": 1,  # neural-network building blocks
    "mlip.data": 2,  # structures, HDF5, graphs, statistics
    "mlip.models": 3,  # Potential, backbones, group averaging
    "mlip.export": 4,  # model files (needs the models to rebuild one)
    "mlip.testing": 4,  # the physics contract every backbone must pass (checks on models)
    "mlip.train": 5,  # Lightning training (exports the best model)
    "mlip.calculator": 5,  # ASE calculator (reads model files)
    "mlip.evaluation": 6,  # model-zoo tables and plots (drives the calculator)
    "mlip.evaluation_equivariance": 6,
    "mlip.md": 6,
    "mlip.zoo": 7,  # physical tasks over a model zoo (drives mlip.evaluation and mlip.md)
    "mlip.cli": 8,  # console scripts: may import anything below
}
ROOT = "mlip"  # mlip/__init__.py: __version__ and the lazy facade mlip.load (see test_root_package_is_a_facade)


def unit_of(module: str) -> str | None:
    """The unit of a dotted module name (None for non-mlip modules and the root package)."""
    if module == ROOT or not module.startswith(ROOT + "."):
        return None
    parts = module.split(".")
    for length in range(len(parts), 1, -1):
        candidate = ".".join(parts[:length])
        if candidate in LAYERS:
            return candidate
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add its unit to LAYERS and docs/design.md")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level still run at import
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(child) for child in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno, id(node) in top_level))
            # `from mlip import export` imports the submodule mlip.export
            if target == ROOT or target.startswith(ROOT + "."):
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                        PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py"
                    ).is_file():
                        found.append((candidate, node.lineno, id(node) in top_level))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    assert SOURCES
    for path in SOURCES:
        name = module_name(path)
        if name != ROOT:
            unit_of(name)


def test_no_module_imports_a_higher_or_sibling_layer():
    violations = []
    for path in SOURCES:
        name = module_name(path)
        source = unit_of(name)
        if source is None:
            continue
        for target, line, _ in imports(path):
            destination = unit_of(target)
            if destination is None or destination == source:
                continue
            if LAYERS[destination] >= LAYERS[source]:
                where = path.relative_to(PACKAGE.parent)
                violations.append(
                    f"{where}:{line}: {source} (rank {LAYERS[source]}) imports {target} (rank {LAYERS[destination]})"
                )
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_lowest_layer_imports_nothing_from_mlip():
    for unit, rank in LAYERS.items():
        if rank:
            continue
        path = PACKAGE.parent / Path(*unit.split(".")).with_suffix(".py")
        mlip_imports = [target for target, _, _ in imports(path) if target == ROOT or target.startswith(ROOT + ".")]
        assert not mlip_imports, f"{unit} imports {mlip_imports}"


def test_root_package_is_a_facade():
    """`import mlip` (for __version__) is allowed from every layer because mlip/__init__.py imports
    nothing at import time; its one function-level import is mlip.export, for `mlip.load`."""
    found = [(target, top) for target, _, top in imports(PACKAGE / "__init__.py") if target.startswith(ROOT)]
    assert not [target for target, top in found if top], "mlip/__init__.py must not import mlip modules at import time"
    assert {target for target, _ in found} <= {"mlip.export"}


def test_no_import_cycle_between_modules():
    """No cycle among the module-level imports of any two mlip modules (within a unit too)."""
    graph: dict[str, set[str]] = {}
    names = {module_name(path) for path in SOURCES}
    for path in SOURCES:
        graph[module_name(path)] = {target for target, _, top in imports(path) if top and target in names}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for successor in sorted(graph.get(node, ())):
            if successor == node:
                continue
            if state.get(successor) == 1:
                cycle = stack[stack.index(successor):] + [node, successor] if successor in stack else [node, successor]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if successor not in state:
                visit(successor, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("mlip.models", ["vesin", "torch_geometric", "lightning", "h5py", "mlip.data", "mlip.train", "mlip.export"]),
        ("mlip.geometry", ["torch_geometric", "vesin", "lightning", "h5py", "mlip.nn", "mlip.data", "mlip.models"]),
        ("mlip.export", ["lightning", "mlip.train", "mlip.data"]),
    ],
)
def test_import_loads_no_higher_layer_or_heavy_dependency(module, forbidden):
    """What importing a layer actually loads (in a fresh interpreter, via sys.modules)."""
    code = (
        f"import sys, {module}\n"
        f"forbidden = {forbidden!r}\n"
        "print(sorted(name for name in forbidden if name in sys.modules))\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    if finished.stdout.strip() != "[]":
        unit = unit_of(module)
        where = [
            f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            for path in SOURCES if unit_of(module_name(path)) == unit
            for target, line, top in imports(path)
            if top and any(target == name or target.startswith(name + ".") for name in forbidden)
        ]
        raise AssertionError(f"import {module} loaded {finished.stdout.strip()}: " + "; ".join(where))
