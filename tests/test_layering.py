"""The toolkit's layers and their one dependency direction, read from every module's imports (``ast``).

core, organism → training, methods, reference → evaluation → studies → views → run, benchmarks.
A module imports toolkit modules of its own rank or lower only; nothing but notebooks imports views; methods and
core never draw (matplotlib, ipywidgets, IPython.display, html) or train (trl, transformers' Trainer, training).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "toolkit"
RANKS = {"core": 0, "organism": 0, "training": 1, "methods": 1, "reference": 1, "evaluation": 2, "studies": 3,
         "views": 4, "run": 5, "benchmarks": 5, "__main__": 5}
DRAWING = ("matplotlib", "ipywidgets", "IPython.display", "html", "circuitsvis")
TRAINING = ("trl", "accelerate", "peft", "toolkit.training")
NO_DRAWING = ("core", "organism", "training", "methods", "reference", "evaluation", "studies")
NO_TRAINING = ("core", "methods", "reference", "evaluation")
MAX_LINES = 420


def layer_of(module: str) -> str | None:
    """``toolkit.methods.eap.graph`` → ``methods``; ``toolkit`` itself (the public surface) → None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every imported module name (absolute; relative imports resolved), top-level and inside functions."""
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                   else []))
            found.append((node.lineno, base))
            if base in ("toolkit",) or base.startswith("toolkit."):  # `from toolkit.methods import eap`
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(module: str, path: Path) -> list[str]:
    """What is wrong with the imports of ``module`` (at ``path``), one line each."""
    layer = layer_of(module)
    if layer is not None and layer not in RANKS:
        return []  # reported by test_every_module_belongs_to_a_layer
    shown = path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path.name
    out = []
    for line, name in imports(path, module):
        where = f"{shown}:{line} imports {name}"
        if layer in NO_DRAWING and any(name == d or name.startswith(d + ".") for d in DRAWING):
            out.append(f"{where}: {layer} must not draw")
        if layer in NO_TRAINING and any(name == t or name.startswith(t + ".") for t in TRAINING):
            out.append(f"{where}: {layer} must not train")
        target = layer_of(name) if name.startswith("toolkit.") else None
        if target not in RANKS:  # not a toolkit layer: a library, or a name imported from the public surface
            continue
        if target == "views" and layer != "views":
            out.append(f"{where}: only notebooks (and views) import views")
        elif layer is None:
            if target not in ("core", "methods", "evaluation"):
                out.append(f"{where}: the public surface exports core, methods and evaluation only")
        elif RANKS[target] > RANKS[layer]:
            out.append(f"{where}: {layer} (rank {RANKS[layer]}) imports {target} (rank {RANKS[target]})")
    return out


def test_every_module_belongs_to_a_layer():
    unknown = [m for m in modules() if layer_of(m) is not None and layer_of(m) not in RANKS]
    assert not unknown, f"modules outside the layers {sorted(RANKS)}: {unknown}"


def test_imports_point_down_the_layers():
    found = [v for module, path in modules().items() for v in violations(module, path)]
    assert not found, "layering violations:\n" + "\n".join(found)


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


@pytest.mark.parametrize("source, layer, expected", [
    ("from toolkit.views.style import despine\n", "methods", "only notebooks"),
    ("import matplotlib.pyplot as plt\n", "methods", "must not draw"),
    ("def f():\n    from toolkit.training import sft\n", "core", "must not train"),
    ("from toolkit.studies import cmap\n", "evaluation", "rank 2) imports studies"),
    ("from ..studies import cmap\n", "methods", "imports studies"),
])
def test_the_checker_catches_each_kind_of_violation(tmp_path, source, layer, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = violations(f"toolkit.{layer}.mod", path)
    assert any(expected in v for v in found), found


def test_the_checker_passes_a_clean_module(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("import torch\nfrom toolkit.core import units\nfrom toolkit.methods import eap\n")
    assert violations("toolkit.evaluation.mod", path) == []
