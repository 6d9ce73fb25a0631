"""The exercise notebooks from one master per lesson: ``python -m toolkit exercises`` (``--check`` to verify).

A master, ``notebooks/exercises/masters/NN_<name>.py``, is a Python file in the percent format:

- ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell (its lines without the leading ``# ``);
- in code, the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are the solution: the exercise notebook
  gets one ``raise NotImplementedError`` in their place, indented as the ``# BEGIN SOLUTION`` line;
- the lines between ``# BEGIN EXERCISE`` and ``# END EXERCISE`` (hints, a stub's scaffolding) appear in the
  exercise notebook only;
- the marker lines themselves appear in neither.

:func:`generate` writes ``notebooks/exercises/NN_<name>.ipynb`` (the exercise) and
``notebooks/exercises/solutions/NN_<name>.ipynb`` (the solution): no outputs or execution counts, cell ids
``cell-00``, ``cell-01``, … and the project's kernel, so the same master always gives the same bytes, and
``tests/test_exercises.py`` fails when a committed notebook differs from what its master generates.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from toolkit.core.io import REPO_ROOT, FileFormatError, atomic_write_text, read_text

EXERCISES_DIR = REPO_ROOT / "notebooks" / "exercises"
KERNEL = {"display_name": "reasoning-circuits", "language": "python", "name": "reasoning-circuits"}
_CELL = re.compile(r"^# %%(?: \[(markdown)\])?\s*$")
_MARKER = re.compile(r"^(\s*)# (BEGIN|END) (SOLUTION|EXERCISE)\s*$")


class MasterError(ValueError):
    """A master that cannot be read or split: not UTF-8, an unclosed or nested block, an END without BEGIN (names file
    and line)."""


def _lines(text: str) -> list[str]:
    """``text`` split into lines as Python splits source: at ``\\n``, ``\\r\\n`` or ``\\r`` only (:meth:`str.splitlines`
    would also split at U+2028, U+0085 and the other Unicode line breaks, which Python keeps inside a line, in a string
    literal say)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse(text: str, source: str = "<master>") -> list[tuple[str, str]]:
    """``[(cell type, source)]`` of a master (markers kept; blank lines around each cell trimmed)."""
    cells: list[tuple[str, list[str]]] = []
    for number, line in enumerate(_lines(text), 1):
        m = _CELL.match(line)
        if m:
            cells.append(("markdown" if m.group(1) else "code", []))
        elif not cells:
            if line.strip():
                raise MasterError(f"{source}:{number}: text before the first '# %%' cell marker")
        else:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        out.append((kind, "\n".join(lines).strip("\n")))
    return out


def render(code: str, solution: bool, source: str = "<master>") -> str:
    """One code cell's source in the solution (``solution=True``) or the exercise version."""
    out: list[str] = []
    block: str | None = None
    for number, line in enumerate(_lines(code), 1):
        m = _MARKER.match(line)
        if m:
            indent, edge, kind = m.groups()
            if edge == "BEGIN":
                if block is not None:
                    raise MasterError(f"{source}: line {number} of a cell: BEGIN {kind} inside a {block} block")
                block = kind
                if kind == "SOLUTION" and not solution:
                    out.append(f"{indent}raise NotImplementedError")
            else:
                if block != kind:
                    raise MasterError(f"{source}: line {number} of a cell: END {kind} without BEGIN {kind}")
                block = None
            continue
        if block is None or (block == "SOLUTION") == solution:
            out.append(line)
    if block is not None:
        raise MasterError(f"{source}: a cell ends inside an unclosed {block} block")
    return "\n".join(out)


def build(text: str, solution: bool, source: str = "<master>") -> nbformat.NotebookNode:
    """The exercise or solution notebook of a master's text."""
    cells = []
    for i, (kind, body) in enumerate(parse(text, source)):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(render(body, solution, source))
        cell["id"] = f"cell-{i:02d}"
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": dict(KERNEL),
                                                         "language_info": {"name": "python"}})
    nb.nbformat_minor = 5
    return nb


def targets(master: Path, root: Path = EXERCISES_DIR) -> dict[str, Path]:
    """``{"exercise": root/NN_name.ipynb, "solution": root/solutions/NN_name.ipynb}`` of a master."""
    name = master.with_suffix(".ipynb").name
    return {"exercise": root / name, "solution": root / "solutions" / name}


def rendered(master: Path, root: Path = EXERCISES_DIR) -> dict[Path, str]:
    """``{notebook path: its JSON text}`` for both notebooks of ``master``."""
    try:
        text = read_text(master, what="exercise master")
    except FileFormatError as err:
        raise MasterError(str(err)) from None
    return {path: nbformat.writes(build(text, kind == "solution", str(master))) + "\n"
            for kind, path in targets(master, root).items()}


def masters(root: Path = EXERCISES_DIR) -> list[Path]:
    """The masters, in lesson order."""
    return sorted((root / "masters").glob("[0-9][0-9]_*.py"))


def generate(root: Path = EXERCISES_DIR, check: bool = False) -> list[Path]:
    """Write every master's two notebooks (``check=False``) or only list those that are missing or out of date
    (``check=True``); returns the notebooks that were (or would be) written."""
    stale = []
    for master in masters(root):
        for path, text in rendered(master, root).items():
            if not path.exists() or path.read_text(encoding="utf-8", errors="replace") != text:
                stale.append(path)
                if not check:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(path, text)
    return stale


def orphans(root: Path = EXERCISES_DIR) -> dict[Path, list[Path]]:
    """``{missing master: its notebooks}``: exercise and solution notebooks left behind after their master was deleted
    (:func:`generate` cannot bring them up to date; restore the master or delete them)."""
    found: dict[Path, list[Path]] = {}
    for folder in (root, root / "solutions"):
        for notebook in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
            master = root / "masters" / notebook.with_suffix(".py").name
            if not master.exists():
                found.setdefault(master, []).append(notebook)
    return dict(sorted(found.items()))
