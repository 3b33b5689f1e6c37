"""The package's layers: every module imports only from the layers above it (no cycle), and
the top level holds only the rooms named here, so a new module has to be placed."""

from __future__ import annotations

import ast
from pathlib import Path

import ssam

PACKAGE = Path(ssam.__file__).resolve().parent
# Top to bottom, as in the README's layout: a room may import only rooms listed before it.
LAYERS = [
    "errors",
    "atomic",
    "threads",
    "weights",
    "sam",
    "tuning",
    "text",
    "model",
    "config",
    "factory",
    "data",
    "inference",
    "evaluation",
    "train",
    "web",
    "demo",
    "cli",
    "__main__",
]


def room_of(module: str) -> str:
    """``ssam.inference.predictor`` -> ``inference``; ``ssam.model`` -> ``model``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ssam"


def imported_modules(path: Path) -> list[str]:
    """Every ``ssam.*`` module a file imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name.startswith("ssam.")]


def test_top_level_holds_only_the_named_rooms():
    rooms = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()
    }
    assert rooms - {"__init__"} == set(LAYERS)


def test_every_room_has_a_docstring():
    for name in LAYERS:
        path = PACKAGE / name / "__init__.py"
        path = path if path.is_file() else PACKAGE / f"{name}.py"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"


def test_imports_only_run_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = room_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if source == "ssam":
            continue
        for module in imported_modules(path):
            target = room_of(module)
            if target != source and rank[target] > rank[source]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not upward, "imports running up a layer:\n" + "\n".join(upward)
