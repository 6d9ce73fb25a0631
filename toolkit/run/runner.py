"""Run notebooks headlessly through papermill into ``runs/<stamp>/``.

Each run folder holds the executed notebooks, their ``*.results.json`` and ``*.claims.json``, ``figures/``, an
``index.json`` listing every notebook's status, time, failing cell and key numbers, and the scorecard
(``claims.json``, ``REPORT.md``; :mod:`toolkit.run.report`). ``--seeds N`` runs every notebook once per seed.
While a notebook runs, one line shows its code cells done and the cell running
(:class:`toolkit.run.engine.CellProgress`). Parameters (``-p key=value``) are typed by each notebook's defaults and
checked before the run folder is made (:mod:`toolkit.run.params`).

Controls: ``--control random`` runs the notebooks again, after the run, into ``control-random/`` with every model
parameter rewritten to ``random:<value>`` (:func:`toolkit.run.params.control_params`): the same study on a
re-initialised copy of each model (same architecture and tokenizer, random weights). The control folder has its own
``index.json`` and scorecard; the top ``index.json`` lists its entries after the run's (marked ``"control":
"random"``), and the top scorecard shows each finding's verdict on the control beside its own. With ``--seeds N`` the
control runs once, with seed 0.

Interrupts (Ctrl-C): ``index.json`` gets a ``running`` entry before each notebook starts. On ``KeyboardInterrupt``
the entry becomes ``interrupted`` (the seconds so far and the cell that was running), ``index.json`` and the
scorecard of what finished are written, the kernel is stopped (:func:`toolkit.run.engine.execute_notebook`), the
partly executed notebook stays in the folder, and :func:`run` raises :class:`RunInterrupted` naming the folder (the
CLI prints that one line and exits 130).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from toolkit.core.io import REPO_ROOT, atomic_write_json, folder_problem
from toolkit.run import profiles, report
from toolkit.run.engine import CellProgress, execute_notebook
from toolkit.run.params import (  # noqa: F401 -- RunnerError, Expression, coerce_param, parse_params: their home was here
    Expression,
    RunnerError,
    _typed_params,
    coerce_param,
    control_params,
    notebook_parameters,
    parse_params,
)

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
DEFAULT_KERNEL = "reasoning-circuits"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``folder`` holds its ``index.json`` (the notebook running marked ``interrupted``) and
    the scorecard of what finished."""

    def __init__(self, folder: Path):
        self.folder = folder
        super().__init__(f"interrupted: index.json and the scorecard of what finished are in {folder}")


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


def check_out_root(out_root: str | Path | None) -> Path:
    """The folder for run folders (default ``<repo>/runs``), created now, before any kernel starts; a
    :class:`RunnerError` naming it and the fix when it is a file, lies under one, or cannot be created or written."""
    path = Path(out_root or REPO_ROOT / "runs")
    problem = folder_problem(path)
    if problem:
        raise RunnerError(f"cannot write run folders under {path}: {problem}; give --out a folder you can write to "
                          "(created if missing)")
    return path


def _new_run_dir(out_root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_root = check_out_root(out_root)
    for i in range(1, 1000):
        path = out_root / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise RunnerError(f"cannot create a run folder under {out_root}: {err.strerror or err}; give --out a "
                              "folder you can write to") from None
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


def control_folder(run_folder: Path, control: str) -> Path:
    """Where the ``control`` run of ``run_folder`` goes: ``control-<name>/``."""
    return Path(run_folder) / f"control-{control}"


def entry_folder(run_folder: Path, entry: dict) -> Path:
    """The folder of a top ``index.json`` entry's executed notebook: ``control-<name>/``, ``seed-<k>/`` or the run's."""
    if "control" in entry:
        return control_folder(run_folder, entry["control"])
    return Path(run_folder) / f"seed-{entry['seed']}" if "seed" in entry else Path(run_folder)


def _run_control(jobs: list[tuple[Path, dict]], control: str, kernel: str, notebooks_dir: Path, run_folder: Path,
                 index: list[dict]) -> list[dict]:
    """The notebooks again as ``control`` (``jobs``' params rewritten) into :func:`control_folder`, which gets its own
    ``index.json`` and scorecard (also after Ctrl-C); the top ``index.json`` lists ``index`` then the control's
    entries, marked ``"control": control``. Returns those entries."""
    folder = control_folder(run_folder, control)

    def publish(entries: list[dict]) -> None:
        atomic_write_json(run_folder / "index.json", index + [{**e, "control": control} for e in entries])

    try:
        entries = _run_notebooks(jobs, kernel, notebooks_dir, folder, f"control {control} ", publish)
    except KeyboardInterrupt:
        report.write_report(folder)  # the control's scorecard of what finished
        raise
    return [{**e, "control": control} for e in entries]


def _write_scorecard(run_folder: Path, seeds: int | None, control: str | None) -> None:
    """The top scorecard (aggregated over the seeds with ``seeds``), with each finding's verdict on the control run
    beside it when one ran (:func:`report.write_report`'s ``controls``)."""
    folder = control_folder(run_folder, control) if control else None
    given = {"controls": {control: folder}} if folder is not None and folder.exists() else {}
    if seeds is None:
        report.write_report(run_folder, **given)
    else:
        report.write_seeds_report(run_folder, range(seeds), **given)


def _check_seeds(notebooks: list[Path], params: dict, seeds: int) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise RunnerError(f"--seeds needs a positive number of seeds, got {seeds!r}")
    if "seed" in params:
        raise RunnerError("give either --seeds N or -p seed=K, not both")
    lacking = [nb.stem for nb in notebooks if "seed" not in notebook_parameters(nb)]
    if lacking:
        raise RunnerError(f"--seeds needs a `seed` parameter in every notebook; {', '.join(lacking)} declares none")


def run(names: list[str] | None, params: dict, out_root: str | Path | None = None, kernel: str | None = None,
        notebooks_dir: str | Path | None = None, seeds: int | None = None, control: str | None = None,
        profile: str | None = None) -> Path:
    """Execute the named notebooks (all if ``names`` is empty) with ``params`` into a fresh
    ``<out_root>/<stamp>/`` (default ``<repo>/runs``) and return that folder.

    Parameters a notebook does not declare are refused before anything runs. A failing notebook is
    recorded in ``index.json`` (cell index, exception) and the run goes on with the next one. Every run folder gets
    ``claims.json`` and ``REPORT.md`` (:mod:`toolkit.run.report`). With ``seeds=N`` the notebooks run once per seed
    ``0 … N−1`` (``-p seed=k``) into ``seed-<k>/``, and the top folder's scorecard aggregates the seeds that
    finished, naming any that did not (an interrupted run keeps the finished seeds). With ``control="random"`` (the
    only one, :data:`~toolkit.run.params.CONTROLS`) the notebooks then run again into ``control-random/`` with their
    model parameters re-initialised (module docstring); with ``seeds`` too, the control runs once, with seed 0.

    ``params`` values are typed by each notebook's defaults (:func:`~toolkit.run.params.coerce_param`; ``-p`` texts
    or typed values) and refused before anything runs when they do not fit, as are model specs that name no model
    (:func:`~toolkit.run.params.model_spec_problem`), a control that cannot rewrite them
    (:func:`~toolkit.run.params.control_params`) and an ``out_root`` that cannot be written (:func:`check_out_root`).
    Ctrl-C raises :class:`RunInterrupted` (see the module docstring) once ``index.json`` and the scorecard are written
    (the control's too, once it started). ``profile`` (:mod:`toolkit.run.profiles`): each notebook gets that
    profile's parameters, ``params`` over them; an unknown one is refused before anything runs, and all notebooks
    (no ``names``) leave out those it does not apply to."""
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    notebooks = resolve_notebooks(names, notebooks_dir)
    if profile is not None:
        skip = profiles.get(profile).skip
        notebooks = notebooks if names else [nb for nb in notebooks if nb.stem[:2] not in skip]
    typed = _typed_params(notebooks, params)
    if profile is not None:  # the profile's values, the -p ones over them (not `profile`: see apply_profile)
        typed = {nb: profiles.profile_params(profile, nb, given) for nb, given in typed.items()}
    if seeds is not None:
        _check_seeds(notebooks, params, seeds)
    seed_zero = {} if seeds is None else {"seed": 0}
    control_jobs = None if control is None else [
        (nb, control_params(nb.stem, notebook_parameters(nb), {**typed[nb], **seed_zero}, control)) for nb in notebooks]
    out_root = check_out_root(out_root)  # before a kernel is installed or started
    kernel = kernel or ensure_kernel()
    run_folder = _new_run_dir(out_root)
    print(f"run folder: {run_folder}", flush=True)
    try:
        if seeds is None:
            index = _run_notebooks([(nb, typed[nb]) for nb in notebooks], kernel, notebooks_dir, run_folder)
        else:
            index = _run_seeds(notebooks, typed, seeds, kernel, notebooks_dir, run_folder)
        if control_jobs is not None:
            index += _run_control(control_jobs, control, kernel, notebooks_dir, run_folder, index)
            _write_scorecard(run_folder, seeds, control)
    except KeyboardInterrupt:
        # a seeds run writes its scorecard itself, also on Ctrl-C; again with the control, once that started
        if seeds is None or (control and control_folder(run_folder, control).exists()):
            _write_scorecard(run_folder, seeds, control)
        raise RunInterrupted(run_folder) from None
    print(f"\n{'notebook':28s} {'status':7s} {'seconds':>8s}  key results")
    for entry in index:
        name = entry["notebook"] + (f" (seed {entry['seed']})" if "seed" in entry else "") + (
            f" (control {entry['control']})" if "control" in entry else "")
        print(f"{name:28s} {entry['status']:7s} {entry['seconds']:8.1f}  {_short(entry['results'])}")
    print(f"\nexecuted notebooks, figures, index.json, claims.json and REPORT.md in {run_folder}")
    return run_folder
