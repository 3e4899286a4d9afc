"""The layers run one way: training imports service, never the reverse. A server
needs nothing but the service package and the model store."""

from __future__ import annotations

import ast
from pathlib import Path

from ..conftest import REPO


def imports_of_training(source: str, module: str) -> list[str]:
    """The ``training`` modules that ``source`` (the module ``module``, dotted) imports,
    by absolute or relative import, at any depth (inside functions too)."""
    found = []
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [target] if node.module else [f"{target}.{a.name}" if target else a.name for a in node.names]
        else:
            continue
        found += [n for n in names if n == "training" or n.startswith("training.")]
    return found


def _service_modules() -> list[tuple[str, Path]]:
    root = REPO / "service"
    return [(".".join(p.relative_to(REPO).with_suffix("").parts), p) for p in sorted(root.rglob("*.py")) if "_pb" not in p.parts]


def test_no_service_module_imports_training():
    modules = _service_modules()
    assert len(modules) > 20  # the whole package was read, not an empty glob
    offenders = {name: hits for name, path in modules if (hits := imports_of_training(path.read_text(), name))}
    assert offenders == {}


def test_the_check_catches_every_spelling_of_the_import():
    """Negative control: the check flags each way of writing the import, and only those."""
    flagged = {
        "import training": ["training"],
        "import training.networks.model as m": ["training.networks.model"],
        "from training.networks import build": ["training.networks"],
        "from training import export": ["training"],
        "def f():\n    from training.networks.cost import window_cost\n": ["training.networks.cost"],
        "from ...training import loop": ["training"],  # three dots from service/backends/ leave the package
    }
    for source, want in flagged.items():
        assert imports_of_training(source, "service.backends.base") == want, source
    for allowed in (
        "import trainingwheels",
        "from service import training_notes",
        "from .. import errors",
        "from ..tiler import Window",
    ):
        assert imports_of_training(allowed, "service.backends.base") == [], allowed
