"""Run notebooks headlessly through papermill into ``runs/<stamp>/``.

Each run folder holds the executed notebooks, their ``*.results.json`` and ``*.claims.json``, ``figures/``, an
``index.json`` listing every notebook's status, time, failing cell and key numbers, and the scorecard
(``claims.json``, ``REPORT.md``; :mod:`toolkit.run.report`). ``--seeds N`` runs every notebook once per seed.
While a notebook runs, one line shows its code cells done and the cell running
(:class:`toolkit.run.engine.CellProgress`).

Parameters (``-p key=value``) are typed by the default each chosen notebook declares (:func:`coerce_param`) and
checked before the run folder is made: a bool takes ``true``/``false`` in any case (also ``yes``/``no``, ``1``/``0``),
an int a whole number, a float any number, a list or tuple a Python literal of one (its elements checked against the
default's), a dict a Python dict, a str the text as given (a non-string other than a path, from a Python caller, is
refused); a parameter whose default is ``None`` or not a literal takes a Python literal, else the text. A wrong
value is refused naming the notebook, the parameter, the value, the expected type and the default.

Interrupts (Ctrl-C): ``index.json`` gets a ``running`` entry before each notebook starts. On ``KeyboardInterrupt``
the entry becomes ``interrupted`` (the seconds so far and the cell that was running), ``index.json`` and the
scorecard of what finished are written, the kernel is stopped (:func:`toolkit.run.engine.execute_notebook`), the
partly executed notebook stays in the folder, and :func:`run` raises :class:`RunInterrupted` naming the folder (the
CLI prints that one line and exits 130).
"""

from __future__ import annotations

import ast
import functools
import json
import numbers
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nbformat

from toolkit.core.io import REPO_ROOT, atomic_write_json
from toolkit.run import report
from toolkit.run.engine import CellProgress, execute_notebook

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
DEFAULT_KERNEL = "reasoning-circuits"


class RunnerError(ValueError):
    """A run that cannot start (unknown notebook, undeclared parameter, bad ``key=value``, wrongly typed value)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``folder`` holds its ``index.json`` (the notebook running marked ``interrupted``) and
    the scorecard of what finished."""

    def __init__(self, folder: Path):
        self.folder = folder
        super().__init__(f"interrupted: index.json and the scorecard of what finished are in {folder}")


class Expression(str):
    """A parameter default that is not a literal: its source text (e.g. ``torch.float32``)."""


def notebook_parameters(path: str | Path) -> dict[str, object]:
    """Names and default values assigned in the notebook's first code cell tagged ``parameters``.

    Values that are not literals are returned as their source text, an :class:`Expression`."""
    nb = nbformat.read(path, as_version=4)
    cell = next((c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])),
                None)
    if cell is None:
        return {}
    params: dict[str, object] = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            default = Expression(ast.get_source_segment(cell.source, value))
        for target in targets:
            if isinstance(target, ast.Name):
                params[target.id] = default
    return params


def parse_params(items: list[str]) -> dict[str, str]:
    """``["n=20", "think=true", "name=a=b"]`` → ``{"n": "20", "think": "true", "name": "a=b"}``: the text of each
    value, typed later against each notebook's defaults (:func:`coerce_param`)."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise RunnerError(f"parameter {item!r} is not of the form key=value")
        params[key] = text
    return params


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _as_number(value: object, kind: type) -> object:
    """``value`` as an int (``kind`` int) or a float (``kind`` float), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral if kind is int else numbers.Real):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return None
    return None


def _as_item(value: object, kind: type) -> object:
    """One element of a list parameter as the type of the default's elements, or ``_BAD`` when it is not one."""
    if kind in (int, float):
        number = None if isinstance(value, str) else _as_number(value, kind)
        return _BAD if number is None else number
    return value if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) else _BAD


_BAD = object()


def coerce_param(notebook: str, name: str, value: object, default: object) -> object:
    """``value`` (a ``-p`` text, or a typed value from a Python caller) as the type of the notebook's ``default``.

    Raises :class:`RunnerError` naming ``notebook``, the parameter, the value, the expected type and the default."""
    typed_default = isinstance(default, bool | int | float | str | list | tuple | dict)
    if default is None or isinstance(default, Expression) or not typed_default:
        return _literal(value) if isinstance(value, str) else value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
        expected, fix = "a bool", "give true or false"
    elif isinstance(default, int | float):
        kind = int if isinstance(default, int) else float
        number = _as_number(value, kind)
        if number is not None:
            return number
        expected, fix = ("an int", "give a whole number") if kind is int else ("a float", "give a number")
    elif isinstance(default, str):
        if isinstance(value, str | os.PathLike):
            return os.fspath(value)
        expected, fix = "a str", "give text"
    else:
        kind = type(default)
        given = _literal(value) if isinstance(value, str) else value
        if isinstance(default, dict):
            ok, expected = isinstance(given, dict), "a dict"
        else:
            ok, expected = isinstance(given, list | tuple), f"a {kind.__name__}"
            item_types = {type(x) for x in default}
            if len(item_types) == 1:  # elements checked against a non-empty default's (common) element type
                (item_type,) = item_types
                expected += f" of {item_type.__name__}"
                given = [_as_item(x, item_type) for x in given] if ok else given
                ok = ok and all(x is not _BAD for x in given)
        if ok:
            return kind(given)
        fix = f"give a Python {kind.__name__} (quoted for the shell), e.g. -p \"{name}={default!r}\""
    raise RunnerError(f"{notebook}: parameter {name}={value!r} is not {expected} (default {default!r}); {fix}")


def ensure_kernel(name: str = DEFAULT_KERNEL) -> str:
    """Install a Jupyter kernel spec ``name`` for this interpreter (in ``sys.prefix``) unless one exists."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name,
                        "--display-name", name], check=True, capture_output=True, text=True)
    return name


def resolve_notebooks(names: list[str] | None, notebooks_dir: str | Path | None = None) -> list[Path]:
    """Notebooks by filename, stem or unique stem prefix; all of them, in order, if ``names`` is empty."""
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    available = sorted(notebooks_dir.glob("*.ipynb"))
    if not available:
        raise RunnerError(f"no notebooks in {notebooks_dir}")
    if not names:
        return available
    listing = ", ".join(p.stem for p in available)
    chosen: list[Path] = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb")
        matches = [p for p in available if p.stem == stem] or [p for p in available
                                                               if p.stem.startswith(stem)]
        if not matches:
            raise RunnerError(f"no notebook matches {name!r}; available: {listing}")
        if len(matches) > 1:
            raise RunnerError(f"{name!r} matches several notebooks ({', '.join(p.stem for p in matches)}); "
                              "give more of the name")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def _typed_params(notebooks: list[Path], params: dict) -> dict[Path, dict]:
    """Each notebook's ``params`` typed by its own defaults; every undeclared or ill-typed one refused at once."""
    undeclared, wrong, typed = [], [], {}
    for nb in notebooks:
        declared = notebook_parameters(nb)
        unknown = sorted(set(params) - set(declared))
        if unknown:
            undeclared.append(f"{nb.stem} does not declare {', '.join(unknown)}; "
                              f"it declares: {', '.join(declared) or '(none)'}")
        typed[nb] = {}
        for name in [n for n in params if n in declared]:
            try:
                typed[nb][name] = coerce_param(nb.stem, name, params[name], declared[name])
            except RunnerError as e:
                wrong.append(str(e))
    problems = [f"refusing to run, {what}:\n  " + "\n  ".join(lines) for what, lines in
                (("undeclared parameters", undeclared), ("parameters of the wrong type", wrong)) if lines]
    if problems:
        raise RunnerError("\n".join(problems))
    return typed


def _new_run_dir(out_root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = out_root / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunnerError(f"could not create a fresh run folder under {out_root}")


def _execute(nb: Path, out: Path, params: dict, kernel: str, cwd: Path, run_folder: Path,
             cell_progress: CellProgress | None = None) -> dict | None:
    """Execute one notebook; return None on success, else the error record."""
    from papermill.exceptions import PapermillExecutionError

    env = {"TOOLKIT_HEADLESS": "1", "TOOLKIT_RUN_DIR": str(run_folder)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        execute_notebook(str(nb), str(out), params=params, kernel=kernel, cwd=str(cwd), cell_progress=cell_progress)
    except PapermillExecutionError as e:
        return {"cell_index": e.cell_index, "ename": e.ename, "evalue": e.evalue}
    except Exception as e:  # kernel died, timeout, missing kernel: record it and go on with the next notebook
        return {"cell_index": None, "ename": type(e).__name__, "evalue": str(e)}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return None


def describe_error(error: dict) -> str:
    """One line naming the failing cell (index in the executed copy) and its exception."""
    where = f"cell {error['cell_index']}" if error["cell_index"] is not None else "outside any cell"
    if error["ename"] == "KeyboardInterrupt":
        return f"stopped by Ctrl-C {'in ' if error['cell_index'] is not None else ''}{where}"
    return f"{where} raised {error['ename']}: {error['evalue']}"


def _short(results: dict | None, width: int = 60) -> str:
    if not results:
        return ""
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()
                     if isinstance(v, int | float | str | bool))
    return text if len(text) <= width else text[: width - 3] + "..."


def _results(folder: Path, nb: Path) -> dict | None:
    path = folder / f"{nb.stem}.results.json"
    return json.loads(path.read_text()) if path.exists() else None


def _run_notebooks(jobs: list[tuple[Path, dict]], kernel: str, notebooks_dir: Path, folder: Path, label: str = "",
                   on_index: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Execute each ``(notebook, params)`` of ``jobs`` in order into ``folder``; write and return ``index.json``'s
    entries (``on_index`` gets them after every write). An entry is written ``running`` before its notebook starts;
    Ctrl-C marks it ``interrupted``, writes the index and lets the ``KeyboardInterrupt`` go on."""
    folder.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []

    def save() -> None:
        atomic_write_json(folder / "index.json", index)
        if on_index is not None:
            on_index(index)

    for i, (nb, params) in enumerate(jobs, 1):
        entry = {"notebook": nb.stem, "status": "running", "seconds": None, "error": None, "results": None}
        index.append(entry)
        cell_progress = CellProgress(f"{label}[{i}/{len(jobs)}] {nb.stem}")
        t0 = time.perf_counter()
        try:
            save()
            error = _execute(nb, folder / nb.name, params, kernel, notebooks_dir, folder, cell_progress)
        except KeyboardInterrupt:
            cell = cell_progress.running[0] if cell_progress.running else None
            entry.update(status="interrupted", seconds=round(time.perf_counter() - t0, 1), results=_results(folder, nb),
                         error={"cell_index": cell, "ename": "KeyboardInterrupt", "evalue": "Ctrl-C"})
            save()
            cell_progress.close(f"INTERRUPTED ({entry['seconds']} s)")
            raise
        entry.update(status="failed" if error else "ok", seconds=round(time.perf_counter() - t0, 1), error=error,
                     results=_results(folder, nb))
        save()
        seconds = entry["seconds"]
        cell_progress.close(f"ok ({seconds} s)" if error is None else f"FAILED ({seconds} s): {describe_error(error)}")
    report.write_report(folder)
    return index


def _run_seeds(notebooks: list[Path], typed: dict[Path, dict], seeds: int, kernel: str, notebooks_dir: Path,
               run_folder: Path) -> list[dict]:
    """Every notebook once per seed into ``seed-<k>/``; the top ``index.json`` lists every seed's entries and the top
    scorecard aggregates the seeds that finished, also after Ctrl-C."""
    index: list[dict] = []

    def publish(k: int, entries: list[dict]) -> None:  # the finished seeds' entries, then seed k's so far
        atomic_write_json(run_folder / "index.json", index + [{**e, "seed": k} for e in entries])

    try:
        for k in range(seeds):
            jobs = [(nb, {**typed[nb], "seed": k}) for nb in notebooks]
            seed_index = _run_notebooks(jobs, kernel, notebooks_dir, run_folder / f"seed-{k}", f"seed {k} ",
                                        functools.partial(publish, k))
            index += [{**entry, "seed": k} for entry in seed_index]
    finally:
        report.write_seeds_report(run_folder, range(seeds))
    return index


def _check_seeds(notebooks: list[Path], params: dict, seeds: int) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise RunnerError(f"--seeds needs a positive number of seeds, got {seeds!r}")
    if "seed" in params:
        raise RunnerError("give either --seeds N or -p seed=K, not both")
    lacking = [nb.stem for nb in notebooks if "seed" not in notebook_parameters(nb)]
    if lacking:
        raise RunnerError(f"--seeds needs a `seed` parameter in every notebook; {', '.join(lacking)} declares none")


def run(names: list[str] | None, params: dict, out_root: str | Path | None = None, kernel: str | None = None,
        notebooks_dir: str | Path | None = None, seeds: int | None = None) -> Path:
    """Execute the named notebooks (all if ``names`` is empty) with ``params`` into a fresh
    ``<out_root>/<stamp>/`` (default ``<repo>/runs``) and return that folder.

    Parameters a notebook does not declare are refused before anything runs. A failing notebook is
    recorded in ``index.json`` (cell index, exception) and the run goes on with the next one. Every run folder gets
    ``claims.json`` and ``REPORT.md`` (:mod:`toolkit.run.report`). With ``seeds=N`` the notebooks run once per seed
    ``0 … N−1`` (``-p seed=k``) into ``seed-<k>/``, and the top folder's scorecard aggregates the seeds that
    finished, naming any that did not (an interrupted run keeps the finished seeds).

    ``params`` values are typed by each notebook's defaults (:func:`coerce_param`; ``-p`` texts or typed values)
    and refused before anything runs when they do not fit. Ctrl-C raises :class:`RunInterrupted` (see the module
    docstring) once ``index.json`` and the scorecard are written."""
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    notebooks = resolve_notebooks(names, notebooks_dir)
    typed = _typed_params(notebooks, params)
    if seeds is not None:
        _check_seeds(notebooks, params, seeds)
    kernel = kernel or ensure_kernel()
    run_folder = _new_run_dir(Path(out_root or REPO_ROOT / "runs"))
    print(f"run folder: {run_folder}", flush=True)
    try:
        if seeds is None:
            index = _run_notebooks([(nb, typed[nb]) for nb in notebooks], kernel, notebooks_dir, run_folder)
        else:
            index = _run_seeds(notebooks, typed, seeds, kernel, notebooks_dir, run_folder)
    except KeyboardInterrupt:
        if seeds is None:  # a seeds run writes its scorecard itself, also on Ctrl-C
            report.write_report(run_folder)
        raise RunInterrupted(run_folder) from None
    print(f"\n{'notebook':28s} {'status':7s} {'seconds':>8s}  key results")
    for entry in index:
        name = entry["notebook"] + (f" (seed {entry['seed']})" if "seed" in entry else "")
        print(f"{name:28s} {entry['status']:7s} {entry['seconds']:8.1f}  {_short(entry['results'])}")
    print(f"\nexecuted notebooks, figures, index.json, claims.json and REPORT.md in {run_folder}")
    return run_folder
