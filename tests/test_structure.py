"""The package's shape: no import cycle between modules or between packages, and docstrings that stand alone.

Imports are read with ``ast`` from every module of ``atom``: module level, inside functions, and under
``if TYPE_CHECKING:`` alike, because a type-only import still makes a reader follow data upward.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "atom"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The ``atom`` modules that ``name`` imports anywhere in its source (package ``__init__``s included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # "from atom.env import prompts" imports the module atom.env.prompts; a name is from the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # "import atom.memory.store as s" and the like
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def package_of(module: str) -> str:
    """The node of ``module`` in the package graph.

    A subpackage's modules are one node (``atom.data``), ``__main__`` included: an entry point that reads the config
    or trains lives at the top level (``atom.data_stats``); a top-level module (``atom.config``, ``atom.fit``) is a
    node of its own.
    """
    parts = module.split(".")
    if len(parts) <= 2:
        return module
    return ".".join(parts[:2])


def find_cycle(graph: dict[str, set[str]]) -> tuple[str, ...] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        return tuple(err.args[1])
    return None


def test_the_graph_reads_every_kind_of_import():
    # a module-level import, a function-level one (of a module from its package) and a type-only one are all edges
    assert "atom.env.rewards" in GRAPH["atom.env.episode"]
    assert "atom.env.baselines" in GRAPH["atom.eval.harness"]  # "from atom.env import baselines" in a function
    assert "atom.memory.store" in GRAPH["atom.env.prompts"]  # under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None


def test_no_import_cycle_between_modules():
    assert find_cycle(GRAPH) is None


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, imports in GRAPH.items():
        node = package_of(module)
        packages.setdefault(node, set()).update(package_of(m) for m in imports if package_of(m) != node)
    assert find_cycle(packages) is None, packages


@pytest.mark.parametrize(
    "lower,upper",
    [
        ("atom.memory", "atom.data"),
        ("atom.data", "atom.env"),
        ("atom.env", "atom.policy"),
        ("atom.env", "atom.eval"),
        ("atom.env", "atom.train"),
        ("atom.policy", "atom.eval"),
        ("atom.policy", "atom.train"),
        ("atom.eval", "atom.train"),
    ],
)
def test_lower_packages_never_import_higher_ones(lower, upper):
    upward = [(m, i) for m, imports in GRAPH.items() if package_of(m) == lower for i in imports if i.startswith(upper)]
    assert not upward


def test_docstrings_cite_nothing_outside_the_repository():
    outside = re.compile(r"\b(DESIGN|REFERENCE|STYLE)\.md\b")
    lines = [(p, i, line) for p in MODULES.values() for i, line in enumerate(p.read_text().splitlines(), 1)]
    assert not [f"{p.relative_to(ROOT)}:{i}" for p, i, line in lines if outside.search(line)]
