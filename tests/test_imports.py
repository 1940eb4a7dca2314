"""Import structure of the two packages, read from the source with ``ast`` (nothing is imported).

Every ``import`` in every ``.py`` file of ``invsolve/`` and ``operators/`` is collected, at module
level and inside functions (imports under ``if TYPE_CHECKING:`` are left out: they never run).
Relative imports are resolved to dotted names, and ``from package import name`` is an edge to the
module ``package.name`` when that file exists, else to ``package`` itself. The checks:

1. the module graph (module-level and function-level edges together) has no cycle;
2. ``operators`` (the bottom layer) never imports ``invsolve``;
3. imports inside functions are only of the optional heavy dependencies in ``LAZY_ALLOWED``
   (imported where used, with an error naming the extra to install); everything else is imported
   at the top of its module.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("invsolve", "operators")

# Optional dependencies (pyproject extras) that stay imported inside the functions that use them.
# matplotlib is a required dependency and is imported at module top like the others.
LAZY_ALLOWED = {"astra", "sigpy", "diffusers", "huggingface_hub", "ray", "pydicom", "nilearn"}

# Exemptions while work is in progress (all empty now): files whose function-local imports are not
# checked yet, cycles not reported yet, and (file, module) function-local imports allowed meanwhile.
PENDING: set[str] = set()
PENDING_CYCLES: set[frozenset[str]] = set()
PENDING_LOCAL: set[tuple[str, str]] = set()


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _is_package(module: str) -> bool:
    return FILES[module].name == "__init__.py"


def _project(name: str) -> str | None:
    """The project module that importing ``name`` loads last (its longest existing prefix)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    while parts and ".".join(parts) not in FILES:
        parts.pop()
    return ".".join(parts) or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects ``(line, top-level name, project module or None, inside a function)``."""

    def __init__(self, module: str):
        self.module = module
        self.depth = 0
        self.found: list[tuple[int, str, str | None, bool]] = []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If):
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self.found.append((node.lineno, alias.name.split(".")[0], _project(alias.name), self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level:
            package = self.module if _is_package(self.module) else self.module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = ".".join(p for p in (package, node.module) if p)
        else:
            base = node.module or ""
        if base == "__future__":
            return
        inside = self.depth > 0
        for alias in node.names:
            target = f"{base}.{alias.name}"
            module = target if target in FILES else _project(base)
            self.found.append((node.lineno, base.split(".")[0], module, inside))


def _collect() -> dict[str, list[tuple[int, str, str | None, bool]]]:
    imports = {}
    for module, path in FILES.items():
        visitor = _Imports(module)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        imports[module] = visitor.found
    return imports


IMPORTS = _collect()


def _graph() -> dict[str, set[str]]:
    graph = {module: set() for module in FILES}
    for module, found in IMPORTS.items():
        graph[module] |= {target for _, _, target, _ in found if target is not None and target != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """``(members, one closed path)`` per strongly connected component of more than one module
    (Tarjan's algorithm, iterative; the path is a shortest cycle through the first member)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]

    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

    cycles = []
    for component in components:
        start = min(component)
        # breadth-first search inside the component for the shortest way back to ``start``
        previous, frontier = {start: None}, [start]
        while frontier and start not in [t for n in frontier for t in graph[n]]:
            nxt = []
            for node in frontier:
                for target in sorted(graph[node] & component):
                    if target not in previous:
                        previous[target] = node
                        nxt.append(target)
            frontier = nxt
        last = next(n for n in frontier if start in graph[n])
        path = [last]
        while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
        cycles.append((sorted(component), path[::-1] + [start]))
    return cycles


def _where(module: str, target: str) -> str:
    lines = sorted({line for line, _, t, _ in IMPORTS[module] if t == target})
    return f"{FILES[module].relative_to(ROOT)}:{','.join(map(str, lines))}"


def test_no_import_cycles():
    reported = []
    for members, cycle in _cycles(_graph()):
        if frozenset(members) in PENDING_CYCLES:
            continue
        steps = [f"{a} -> {b} ({_where(a, b)})" for a, b in zip(cycle, cycle[1:])]
        reported.append(f"{{{', '.join(members)}}}, e.g.\n    " + "\n    ".join(steps))
    assert not reported, "import cycles (make the dependency one-directional):\n  " + "\n\n  ".join(reported)


def test_operators_never_import_invsolve():
    bad = [f"{FILES[m].relative_to(ROOT)}:{line} imports {target or name}"
           for m, found in IMPORTS.items() if m.split(".")[0] == "operators"
           for line, name, target, _ in found if name == "invsolve"]
    assert not bad, "operators is the bottom layer and must not import invsolve:\n" + "\n".join(bad)


def test_function_local_imports_are_optional_dependencies():
    bad = []
    for module, found in IMPORTS.items():
        path = str(FILES[module].relative_to(ROOT))
        if path in PENDING:
            continue
        bad += sorted({f"{path}:{line} imports {target or name} inside a function"
                       for line, name, target, inside in found
                       if inside and name not in LAZY_ALLOWED and (path, target) not in PENDING_LOCAL},
                      key=lambda s: int(s.split(":")[1].split()[0]))
    assert not bad, ("import these at the top of the module (only the optional dependencies "
                     f"{sorted(LAZY_ALLOWED)} are imported where used):\n" + "\n".join(bad))


def test_the_checks_see_every_file_and_resolve_relative_imports():
    assert {"invsolve", "operators", "operators.ct", "invsolve.priors.loaders"} <= set(FILES)
    assert all((ROOT / p).is_file() for p in PENDING), sorted(p for p in PENDING if not (ROOT / p).is_file())
    graph = _graph()
    assert "operators.ct" in graph["operators.fanbeam"]  # from .ct import RayTransform, ...
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [(["a", "b", "c"], ["a", "b", "c", "a"])]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_sampler_imports_another_samplers_file():
    """Shared steps live in ``samplers/toolkit.py`` (and the contract in ``samplers/base.py``):
    a method file imports neither another method's file nor anything but those two from its package."""
    shared = {"invsolve.samplers", "invsolve.samplers.base", "invsolve.samplers.toolkit"}
    methods = {m for m in FILES if m.startswith("invsolve.samplers.") and m not in shared}
    assert {"invsolve.samplers.dps", "invsolve.samplers.daps"} <= methods
    graph = _graph()
    bad = sorted(f"{m} imports {t}" for m in methods for t in graph[m] if t in methods)
    assert not bad, "move the shared step into invsolve/samplers/toolkit.py:\n" + "\n".join(bad)
