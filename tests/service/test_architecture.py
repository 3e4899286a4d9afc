"""The house rules, checked on the source: no import cycle inside ``service/`` (imports
inside functions count: that is where cycles hide), the layers import only downwards,
and no module outside the geometry package compares a window-mode string."""

from __future__ import annotations

import ast
from pathlib import Path

from service.tiling.geometry import GEOMETRIES

from ..conftest import REPO

# Lower first: a package may import its own modules and those of the layers before it.
LAYERS = [
    {"errors", "machine", "allocator", "_pb", "metrics", "transport", "codegen", "urls"},
    {"rasters"},
    {"tiling"},
    {"outputs", "store"},
    {"engines"},
    {"torchserve"},
    {"remote"},
    {"models"},
    {"api", "batch"},
    {"client", "cli"},
]


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        if "_pb" in p.parts:
            continue
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` imports at run time, anywhere in it (an
    import under ``if TYPE_CHECKING:`` is for the type checker only)."""
    tree = ast.parse(source)
    skip = {id(n) for block in ast.walk(tree) if _type_checking(block) for n in ast.walk(block)}
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # ``from pkg import mod`` imports the module ``pkg.mod`` where there is one.
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known}
    return found - {module}


def _graph() -> dict[str, set[str]]:
    modules = _modules(REPO / "service", "service")
    known = set(modules)
    return {m: imported(p.read_text(), m, p.name == "__init__.py", known) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_cycle_inside_service():
    graph = _graph()
    assert len(graph) > 50 and sum(len(v) for v in graph.values()) > 100  # the whole package was read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function():
    """Negative control: two modules that import each other, one of them inside a function."""
    known = {"service.a", "service.b"}
    graph = {
        "service.a": imported("from service.b import x\n", "service.a", False, known),
        "service.b": imported("def f():\n    from service.a import y\n", "service.b", False, known),
    }
    assert _cycle(graph) == ["service.a", "service.b", "service.a"]
    typing_only = imported(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service.a import y\n", "service.b", False, known
    )
    assert typing_only == set()


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_every_layer_imports_only_its_own_and_lower_layers():
    graph = _graph()
    packages = {m.split(".")[1] for m in graph if "." in m}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)  # every folder has a floor
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() if "." in m for t in targets if _layer(t) > _layer(m))
    assert upward == []


MODES = set(GEOMETRIES)


def mode_comparisons(source: str) -> list[str]:
    """Comparisons of a value with a window-mode string (``== "dual"``, ``in ("large", ...)``)
    and ``case "overlap":`` patterns in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            strings = [o.value for o in operands if isinstance(o, ast.Constant)]
            for o in operands:
                if isinstance(o, (ast.Tuple, ast.List, ast.Set)):
                    strings += [e.value for e in o.elts if isinstance(e, ast.Constant)]
            if MODES & {s for s in strings if isinstance(s, str)}:
                found.append(ast.unparse(node))
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant) and node.value.value in MODES:
            found.append(f"case {node.value.value!r}")
    return found


def test_no_module_outside_the_geometry_package_compares_a_window_mode():
    checked = 0
    offenders = {}
    for folder in ("service", "training", "benchmarks", "loadtest"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if "_pb" in path.parts or path.is_relative_to(REPO / "service" / "tiling"):
                continue
            checked += 1
            if hits := mode_comparisons(path.read_text()):
                offenders[str(path.relative_to(REPO))] = hits
    assert checked > 80 and offenders == {}


def test_the_mode_check_catches_every_spelling():
    """Negative control: each way of comparing a mode is flagged, and only those."""
    for source in (
        'if spec.mode == "large":\n    pass\n',
        'x = 2 if entry.mode == "dual" else 1\n',
        'ok = mode in ("large", "overlap")\n',
        'ok = "dual" != m\n',
        'match mode:\n    case "overlap":\n        pass\n',
    ):
        assert mode_comparisons(source), source
    for source in ('name = "large"\n', "print(geometry.mode)\n", 'modes = {"dual": 2}\n', 'ok = kind == "largest"\n'):
        assert mode_comparisons(source) == [], source
