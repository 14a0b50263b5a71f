"""The package's layering, read from the source: no import circle between its modules, and no module importing
another module's private (underscore) name.

A circle means neither module can be read, changed or loaded without the other; an underscore name imported across
modules is a private step that has become shared API without saying so. Both are checked on the source (`ast`), not
by importing, so that an import made only inside a function (to load a heavy dependency late) counts too.

The modules: every file of `nextlocllm_hf/`, the flat model code `modeling/` as the installed package sees it
(`nextlocllm_hf.modeling`, setup.cfg's package_dir) and `train.py`. From the command line,

    python tests/test_layering.py

prints every circle and underscore import found (exit status 1 if any).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "nextlocllm_hf"
# Where each module name's files are: the installed layout (setup.cfg package_dir), not the checkout's folders.
ROOTS = {PACKAGE: REPO / "nextlocllm_hf", f"{PACKAGE}.modeling": REPO / "modeling"}
SCRIPTS = {"train": REPO / "train.py"}


@dataclass(frozen=True)
class Import:
    """One module's use of another: `importer` imports `name` of `imported` (name None: the module itself)."""

    importer: str
    imported: str
    name: str | None
    line: int

    def __str__(self) -> str:
        what = self.imported if self.name is None else f"{self.name} from {self.imported}"
        return f"{self.importer} (line {self.line}) imports {what}"


def package_modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the package and the scripts."""
    modules = dict(SCRIPTS)
    for root_name, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((root_name, *parts))
            modules.setdefault(name, path)  # nextlocllm_hf/modeling would be shadowed by modeling/: none exists
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imports_of(name: str, modules: dict[str, Path]) -> list[Import]:
    """Every import in module `name` (at module level and inside functions) of another module of the package."""
    tree = ast.parse(modules[name].read_text(encoding="utf-8"), filename=str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, None, node.lineno) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = ".".join(filter(None, (base, node.module)))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # `from . import x`: the module x itself
                    found.append(Import(name, submodule, None, node.lineno))
                elif base in modules:
                    found.append(Import(name, base, alias.name, node.lineno))
    return [i for i in found if i.imported != name]


def import_graph(modules: dict[str, Path]) -> dict[str, list[Import]]:
    return {name: imports_of(name, modules) for name in sorted(modules)}


def private_imports(graph: dict[str, list[Import]]) -> list[Import]:
    """Imports of another module's underscore name (dunder names such as `__version__` are public)."""
    return [i for imports in graph.values() for i in imports
            if i.name is not None and i.name.startswith("_") and not (i.name.startswith("__") and
                                                                       i.name.endswith("__"))]


@dataclass(frozen=True)
class Cycle:
    """Modules that import each other (directly or through one another), and one circle among them."""

    modules: list[str]
    example: list[Import]  # a -> b -> ... -> a, as the imports that close it

    def __str__(self) -> str:
        path = " -> ".join([self.example[0].importer, *(i.imported for i in self.example)])
        return (f"{len(self.modules)} modules import each other: {', '.join(self.modules)}\n  e.g. {path}\n"
                + "".join(f"    {i}\n" for i in self.example))


def import_cycles(graph: dict[str, list[Import]]) -> list[Cycle]:
    """Each group of modules that import each other (Tarjan's strongly connected components), with a circle."""
    edges = {name: sorted({i.imported for i in imports}) for name, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:  # recursion depth is bounded by the number of modules (~100)
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in edges:
        if module not in index:
            visit(module)
    return [Cycle(group, _circle_in(group, graph)) for group in sorted(groups)]


def _circle_in(group: list[str], graph: dict[str, list[Import]]) -> list[Import]:
    """The shortest circle through the first module of a strongly connected `group` (breadth first)."""
    members, start = set(group), group[0]
    came_from: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for i in graph[module]:
                if i.imported == start:
                    path = [i]
                    while path[0].importer != start:
                        path.insert(0, came_from[path[0].importer])
                    return path
                if i.imported in members and i.imported not in came_from:
                    came_from[i.imported] = i
                    following.append(i.imported)
        frontier = following
    raise AssertionError(f"{group} is not a circle")


def findings() -> tuple[list[Cycle], list[Import]]:
    graph = import_graph(package_modules())
    return import_cycles(graph), private_imports(graph)


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    """The checks below rest on the parser: it must see the imports the package is known to make."""
    graph = import_graph(package_modules())
    seen = {(i.importer, i.imported, i.name) for imports in graph.values() for i in imports}
    assert ("nextlocllm_hf", "nextlocllm_hf.modeling.configuration_nextlocllm", "NextLocLLMConfig") in seen
    assert ("nextlocllm_hf.evaluate_metric", "nextlocllm_hf.modeling", None) in seen  # `from .. import modeling`
    assert ("nextlocllm_hf.data.build", "nextlocllm_hf.data.partitioned", "build_partitioned") in seen  # in a function
    assert any(importer == "train" and imported.startswith(f"{PACKAGE}.") for importer, imported, _ in seen)


def test_no_import_cycle():
    cycles, _ = findings()
    assert not cycles, "import circles:\n" + "".join(str(cycle) for cycle in cycles)


def test_no_module_imports_another_modules_private_name():
    _, private = findings()
    assert not private, "underscore names imported from another module:\n" + "\n".join(f"  {i}" for i in private)


def main() -> int:
    cycles, private = findings()
    print(f"{len(cycles)} import circle(s)")
    for cycle in cycles:
        print("  " + str(cycle).replace("\n", "\n  ").rstrip())
    print(f"{len(private)} underscore import(s) across modules")
    for i in private:
        print(f"  {i}")
    return 1 if cycles or private else 0


if __name__ == "__main__":
    sys.exit(main())
