"""The toolkit's layers and the rules their ``__init__`` docstrings state, read from every module's imports (``ast``).

Every import counts: top-level, inside functions (lazy), and ``importlib.import_module`` / ``__import__`` of a
literal or f-string module name. The rules:

- each layer imports only the layers of :data:`ALLOWED` (``core`` → ``organism`` → ``training``, ``methods`` →
  ``reference``, ``evaluation`` → ``studies`` → ``course``, ``views`` → ``run``, ``benchmarks``; views only
  beneath notebooks);
- a study (``toolkit.studies.<notebook>``) never imports another study;
- nothing but views imports views (notebooks do); nothing but ``run`` and ``toolkit.__main__`` imports ``run``;
- the layers of :data:`NO_DRAWING` never draw, those of :data:`NO_TRAINING` never train;
- the public surface (``toolkit/__init__.py``) exports core, methods and evaluation only (and imports the organism,
  which registers its checks with core);
- no module is longer than :data:`MAX_LINES`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "toolkit"
BELOW_STUDIES = {"core", "organism", "training", "methods", "evaluation"}
ALLOWED = {  # layer -> the toolkit layers it may import (its own included)
    "core": {"core"},
    "organism": {"core", "organism"},
    "training": {"core", "organism", "training"},
    "methods": {"core", "organism", "methods"},
    "reference": {"core", "organism", "methods", "reference"},
    "evaluation": {"core", "organism", "methods", "evaluation"},
    "studies": BELOW_STUDIES | {"studies"},
    "course": BELOW_STUDIES | {"reference", "studies", "course"},
    "views": BELOW_STUDIES | {"studies", "views"},
    "run": BELOW_STUDIES | {"reference", "studies", "course", "benchmarks", "run"},  # the CLI dispatches benchmarks
    "benchmarks": BELOW_STUDIES | {"reference", "studies", "benchmarks"},
    "__main__": {"run"},
}
PUBLIC_SURFACE = {"core", "methods", "evaluation", "organism"}  # organism: imported so it registers with core
DRAWING = ("matplotlib", "ipywidgets", "IPython.display", "html", "circuitsvis")
TRAINING = ("trl", "accelerate", "peft", "toolkit.training")
NO_DRAWING = ("core", "organism", "training", "methods", "reference", "evaluation", "studies", "course")
NO_TRAINING = ("core", "methods", "reference", "evaluation")
MAX_LINES = 400


def layer_of(module: str) -> str | None:
    """``toolkit.methods.eap.graph`` → ``methods``; ``toolkit`` itself (the public surface) → None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def study_of(module: str) -> str | None:
    """``toolkit.studies.rim.probes`` → ``rim``; None outside ``toolkit.studies`` (and for the package itself)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["toolkit", "studies"] else None


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def _dynamic_name(node: ast.Call) -> str | None:
    """The module a call ``importlib.import_module(name)`` / ``__import__(name)`` imports, when ``name`` is a literal
    (an f-string counts up to its first placeholder, ``f"toolkit.benchmarks.{x}"`` → ``toolkit.benchmarks``)."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if called not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".") or None
    return None


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every imported module name (absolute; relative imports resolved), top-level, inside functions and dynamic."""
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            if base == "toolkit" or base.startswith("toolkit."):  # `from toolkit.methods import eap`
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and (name := _dynamic_name(node)):
            found.append((node.lineno, name))
    return found


def violations(module: str, path: Path) -> list[str]:
    """What is wrong with the imports of ``module`` (at ``path``), one line each."""
    layer = layer_of(module)
    if layer is not None and layer not in ALLOWED:
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
        if target not in ALLOWED:  # not a toolkit layer: a library, or a name imported from the public surface
            continue
        if target == "views" and layer != "views":
            out.append(f"{where}: only notebooks (and views) import views")
        elif target == "run" and layer not in ("run", "__main__"):
            out.append(f"{where}: only toolkit.__main__ (and run) imports run")
        elif layer is None:
            if target not in PUBLIC_SURFACE:
                out.append(f"{where}: the public surface exports core, methods and evaluation only")
        elif target not in ALLOWED[layer]:
            out.append(f"{where}: {layer} may import only {', '.join(sorted(ALLOWED[layer]))}, not {target}")
        elif study_of(module) and study_of(name) and study_of(name) != study_of(module):
            out.append(f"{where}: a study never imports another study (move what both need a floor lower)")
    return out


def test_every_module_belongs_to_a_layer():
    unknown = [m for m in modules() if layer_of(m) is not None and layer_of(m) not in ALLOWED]
    assert not unknown, f"modules outside the layers {sorted(ALLOWED)}: {unknown}"


def test_each_study_is_a_subpackage_named_after_its_notebook():
    notebooks = {p.stem.split("_", 1)[1] for p in (ROOT.parent / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    studies = {p.name for p in (ROOT / "studies").iterdir() if (p / "__init__.py").exists()}
    loose = [p.name for p in (ROOT / "studies").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly under studies/ (each belongs to its notebook's subpackage): {loose}"
    named = {"model_organism": "organism", "corrupt_finetune": "corrupt", "eap_ig": "emergent"}
    assert {named.get(n, n) for n in notebooks} == studies


def test_imports_follow_the_layer_rules():
    found = [v for module, path in modules().items() for v in violations(module, path)]
    assert not found, "layering violations:\n" + "\n".join(found)


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


@pytest.mark.parametrize("module, source, expected", [
    ("toolkit.methods.mod", "from toolkit.views.style import despine\n", "only notebooks"),
    ("toolkit.studies.cmap.mod", "from toolkit.run.results import save\n", "only toolkit.__main__"),
    ("toolkit.methods.mod", "import matplotlib.pyplot as plt\n", "must not draw"),
    ("toolkit.course.mod", "import ipywidgets\n", "must not draw"),
    ("toolkit.core.mod", "def f():\n    from toolkit.training import sft\n", "must not train"),
    ("toolkit.evaluation.mod", "import trl\n", "must not train"),
    ("toolkit.core.mod", "from toolkit.organism import tasks\n", "core may import only core, not organism"),
    ("toolkit.core.mod", "def f():\n    from toolkit.organism.recipe import Recipe\n", "not organism"),
    ("toolkit.organism.mod", "from toolkit.methods import eap\n", "not methods"),
    ("toolkit.training.mod", "from toolkit.methods import eap\n", "training may import only"),
    ("toolkit.methods.mod", "from toolkit.reference.eap import reference\n", "not reference"),
    ("toolkit.methods.mod", "from toolkit.training import sft\n", "not training"),
    ("toolkit.evaluation.mod", "from toolkit.studies import cmap\n", "not studies"),
    ("toolkit.studies.mod", "from toolkit.course import rim\n", "not course"),
    ("toolkit.studies.mod", "from toolkit.reference import eap\n", "not reference"),
    ("toolkit.methods.mod", "from ..studies import cmap\n", "not studies"),
    ("toolkit.studies.cmap.mod", "from toolkit.studies.corrupt import finetune\n", "never imports another study"),
    ("toolkit.studies.cmap", "def f():\n    from toolkit.studies import corrupt\n", "never imports another study"),
    ("toolkit.studies.rim.mod", "from .probes import make_probes\n", None),
    ("toolkit.studies.cmap.mod", "import importlib\nimportlib.import_module('toolkit.studies.rim')\n",
     "never imports another study"),
    ("toolkit.methods.mod", "import importlib\nm = importlib.import_module(f'toolkit.training.{x}')\n",
     "not training"),
    ("toolkit.core.mod", "__import__('toolkit.organism.tasks')\n", "not organism"),
    ("toolkit", "from toolkit.studies import cmap\n", "public surface"),
])
def test_the_checker_catches_each_kind_of_violation(tmp_path, module, source, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = violations(module, path)
    if expected is None:
        assert found == [], found
    else:
        assert any(expected in v for v in found), found


def test_the_checker_passes_a_clean_module(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("import torch\nfrom toolkit.core import units\nfrom toolkit.methods import eap\n")
    assert violations("toolkit.evaluation.mod", path) == []
