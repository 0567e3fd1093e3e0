"""The package's shape, read from its source with `ast` (nothing is imported): no import cycle between its modules, no
module over 600 lines, and no module reaching into another module's private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "hf_influence"
PACKAGE = PACKAGE_ROOT.name
MAX_MODULE_LINES = 600
#: Modules allowed over `MAX_MODULE_LINES` for now (none left since the SASRec split of issue 15).
OVERSIZED_MODULES: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


MODULES = package_modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve_relative(importer: str, level: int, module: str | None) -> str:
    """The absolute module name of `from <level dots><module> import ...` written in module `importer`."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level and inside functions (they run at call time, and a cycle
    through them is still a tangle of responsibilities), but not under `if TYPE_CHECKING:` (never run)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def imported_modules(importer: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package modules that an import statement executes: the named module, a submodule imported by name with
    `from package import submodule`, and the packages above them that `importer` is not itself inside (their
    `__init__` runs first; a module's own parent packages are already being imported when it runs)."""
    targets: set[str] = set()
    if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
    else:
        base = resolve_relative(importer, node.level, node.module)
        targets.add(base)
        targets.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    executed = set()
    for target in targets:
        parts = target.split(".")
        if parts[0] != PACKAGE:
            continue
        for end in range(1, len(parts) + 1):
            name = ".".join(parts[:end])
            if name in MODULES and not (importer == name or importer.startswith(name + ".")):
                executed.add(name)
    return executed


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set().union(*(imported_modules(name, node) for node in runtime_imports(tree))) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_cycle_finder_and_import_resolution_on_known_cases():
    """The checks below are only as good as these helpers: a planted cycle is found, relative imports resolve."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert resolve_relative("hf_influence.grads.norms", 1, "layers") == "hf_influence.grads.layers"
    assert resolve_relative("hf_influence.grads.norms", 2, "tasks") == "hf_influence.tasks"
    assert resolve_relative("hf_influence.grads", 1, "core") == "hf_influence.grads.core"
    node = ast.parse("from ..scorers.base import pad_batch").body[0]
    assert imported_modules("hf_influence.grads.core", node) == {"hf_influence.scorers", "hf_influence.scorers.base"}
    node = ast.parse("from . import layers").body[0]
    assert imported_modules("hf_influence.grads.norms", node) == {"hf_influence.grads.layers"}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hf_influence.store\n"
                     "def f():\n    import hf_influence.signals\n")
    assert [imported_modules("hf_influence.trainer", n) for n in runtime_imports(tree)] == [
        set(), {"hf_influence.signals"}]


def test_no_import_cycle_between_package_modules():
    graph = import_graph()
    assert "hf_influence.grads.norms" in graph["hf_influence.grads"]  # the graph is not trivially empty
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_per_example_gradient_code_does_not_import_the_scorers():
    """`grads/` sits below `scorers/` (scorers use it); the plumbing both need (batching, fingerprints, tasks) lives in
    package-level modules under both, so no arrow runs from `grads/` back up to `scorers/`."""
    graph = import_graph()
    upward = {name: sorted(t for t in targets if t.startswith(f"{PACKAGE}.scorers"))
              for name, targets in graph.items() if name.startswith(f"{PACKAGE}.grads")}
    assert {name: targets for name, targets in upward.items() if targets} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    path = MODULES[name]
    relative = path.relative_to(PACKAGE_ROOT.parent).as_posix()
    lines = len(path.read_text().splitlines())
    if relative in OVERSIZED_MODULES:
        pytest.skip(f"{relative} ({lines} lines) is a known exception")
    assert lines <= MAX_MODULE_LINES, f"{relative} has {lines} lines (at most {MAX_MODULE_LINES}); split it"


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def dotted_name(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of attribute accesses on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def private_name_uses(importer: str, tree: ast.AST) -> list[str]:
    """`from <package module> import _name`, `alias._name` where `alias` is a package module bound by an import
    in `importer`, and `hf_influence.module._name` after a plain `import hf_influence.module` (another module's
    private name each way)."""
    uses = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = resolve_relative(importer, node.level, node.module)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    aliases[alias.asname or alias.name] = full
                elif private(alias.name) and base != importer:
                    uses.append(f"from {base} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and private(node.attr)):
            continue
        owner = dotted_name(node.value)
        owner = aliases.get(owner, owner)  # an alias, or the module's full dotted path (`import a.b` binds `a`)
        if owner in MODULES and owner != importer:
            uses.append(f"{owner}.{node.attr}")
    return uses


def test_private_name_finder_on_known_cases():
    tree = ast.parse("from .layers import _rms_eps, build_plan\nfrom . import layers\nx = layers._CHUNK_BYTES\n"
                     "y = layers.__name__\nfrom ..signals import _private\nfrom torch import _C\n"
                     "import hf_influence.store as store_module\nz = store_module._hidden\n"
                     "import hf_influence.grads.hooks\nw = hf_influence.grads.hooks._state\n"
                     "v = hf_influence.grads.graphs._own\n")
    assert sorted(private_name_uses("hf_influence.grads.graphs", tree)) == [
        "from hf_influence.grads.layers import _rms_eps", "from hf_influence.signals import _private",
        "hf_influence.grads.hooks._state", "hf_influence.grads.layers._CHUNK_BYTES", "hf_influence.store._hidden"]


def test_no_module_uses_another_modules_private_names():
    found = {}
    for name, path in MODULES.items():
        uses = private_name_uses(name, ast.parse(path.read_text(), str(path)))
        if uses:
            found[name] = uses
    assert not found, f"private names used across modules: {found}"
