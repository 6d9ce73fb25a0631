"""Run notebooks headlessly through papermill into ``runs/<stamp>/``.

Each run folder holds the executed notebooks, their ``*.results.json`` and ``*.claims.json``, ``figures/``, an
``index.json`` listing every notebook's status, time, failing cell and key numbers, and the scorecard
(``claims.json``, ``REPORT.md``; :mod:`toolkit.run.report`). ``--seeds N`` runs every notebook once per seed.
While a notebook runs, one line shows its code cells done and the cell running
(:class:`toolkit.run.engine.CellProgress`).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from toolkit.core.io import REPO_ROOT, atomic_write_json
from toolkit.run import report
from toolkit.run.engine import CellProgress, execute_notebook

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
DEFAULT_KERNEL = "reasoning-circuits"


class RunnerError(ValueError):
    """A run that cannot start (unknown notebook, undeclared parameter, bad ``key=value``)."""


def notebook_parameters(path: str | Path) -> dict[str, object]:
    """Names and default values assigned in the notebook's first code cell tagged ``parameters``.

    Values that are not literals are returned as their source text."""
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
        except ValueError:
            default = ast.get_source_segment(cell.source, value)
        for target in targets:
            if isinstance(target, ast.Name):
                params[target.id] = default
    return params


def parse_params(items: list[str]) -> dict[str, object]:
    """``["n=20", "think=True", "model=organism"]`` → ``{"n": 20, "think": True, "model": "organism"}``.

    Values are Python literals where they parse as one, else strings."""
    params: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise RunnerError(f"parameter {item!r} is not of the form key=value")
        try:
            params[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[key] = text
    return params


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


def _check_params(notebooks: list[Path], params: dict) -> None:
    problems = []
    for nb in notebooks:
        declared = notebook_parameters(nb)
        unknown = sorted(set(params) - set(declared))
        if unknown:
            problems.append(f"{nb.stem} does not declare {', '.join(unknown)}; "
                            f"it declares: {', '.join(declared) or '(none)'}")
    if problems:
        raise RunnerError("refusing to run, undeclared parameters:\n  " + "\n  ".join(problems))


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
    return f"{where} raised {error['ename']}: {error['evalue']}"


def _short(results: dict | None, width: int = 60) -> str:
    if not results:
        return ""
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()
                     if isinstance(v, int | float | str | bool))
    return text if len(text) <= width else text[: width - 3] + "..."


def _run_notebooks(notebooks: list[Path], params: dict, kernel: str, notebooks_dir: Path, folder: Path,
                   label: str = "") -> list[dict]:
    """Execute ``notebooks`` in order into ``folder``; write and return ``index.json``'s entries."""
    folder.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []
    for i, nb in enumerate(notebooks, 1):
        cell_progress = CellProgress(f"{label}[{i}/{len(notebooks)}] {nb.stem}")
        t0 = time.perf_counter()
        error = _execute(nb, folder / nb.name, params, kernel, notebooks_dir, folder, cell_progress)
        seconds = round(time.perf_counter() - t0, 1)
        results_path = folder / f"{nb.stem}.results.json"
        results = json.loads(results_path.read_text()) if results_path.exists() else None
        entry = {"notebook": nb.stem, "status": "failed" if error else "ok", "seconds": seconds,
                 "error": error, "results": results}
        index.append(entry)
        atomic_write_json(folder / "index.json", index)
        cell_progress.close(f"ok ({seconds} s)" if error is None else f"FAILED ({seconds} s): {describe_error(error)}")
    report.write_report(folder)
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
    finished, naming any that did not (an interrupted run keeps the finished seeds)."""
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    notebooks = resolve_notebooks(names, notebooks_dir)
    _check_params(notebooks, params)
    if seeds is not None:
        _check_seeds(notebooks, params, seeds)
    kernel = kernel or ensure_kernel()
    run_folder = _new_run_dir(Path(out_root or REPO_ROOT / "runs"))
    print(f"run folder: {run_folder}", flush=True)
    if seeds is None:
        index = _run_notebooks(notebooks, params, kernel, notebooks_dir, run_folder)
    else:
        index = []
        try:
            for k in range(seeds):
                seed_index = _run_notebooks(notebooks, {**params, "seed": k}, kernel, notebooks_dir,
                                            run_folder / f"seed-{k}", label=f"seed {k} ")
                index += [{**entry, "seed": k} for entry in seed_index]
                atomic_write_json(run_folder / "index.json", index)
        finally:  # also on Ctrl-C: the seeds that finished keep their scorecard
            report.write_seeds_report(run_folder, range(seeds))
    print(f"\n{'notebook':28s} {'status':7s} {'seconds':>8s}  key results")
    for entry in index:
        name = entry["notebook"] + (f" (seed {entry['seed']})" if "seed" in entry else "")
        print(f"{name:28s} {entry['status']:7s} {entry['seconds']:8.1f}  {_short(entry['results'])}")
    print(f"\nexecuted notebooks, figures, index.json, claims.json and REPORT.md in {run_folder}")
    return run_folder
