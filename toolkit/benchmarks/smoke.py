"""Smoke run on real shapes: every notebook, at its tiny test parameters, on a random-init Qwen3 with the real
Qwen3 tokenizer.

``python -m toolkit bench smoke [--shape tiny|qwen3-0.6b] [--notebooks 03 05 ...] [--out FILE]`` builds the model
of the shape (:func:`toolkit.organism.qwen_like.qwen_like_dir`: the 151,936-token vocabulary, Qwen3's chat template
and think tokens) and a second one with other random weights (the base, donor or teacher where a notebook takes
one) in a temporary folder, then runs each notebook headlessly, each as its own ``python -m toolkit run`` (benchmarks
do not import the runner, and a process per notebook keeps one's failure from the next), with its
``test_parameters`` under the smoke budgets (:data:`SMOKE_PARAMS`, also the ``gpu-smoke`` profile's) and the model
parameters pointed at those folders; training caches go to the temporary folder, not the repository's ``.cache``.
Per notebook it records seconds, status
(``ok``; ``precondition failed`` when the notebook stopped on
:class:`~toolkit.evaluation.preconditions.PreconditionFailed`, which a random model is expected to meet often;
``failed`` with the error's last line; ``skipped`` with the reason) and peak memory of the notebook's kernel:
``torch.cuda.max_memory_allocated`` on CUDA, else its peak resident set (both read in the kernel as it exits,
through a ``sitecustomize`` put on the kernel's ``PYTHONPATH``). The JSON goes to ``--out`` (default
``bench/results/smoke-<shape>.json``), written atomically, with the load average at the start and end of the run
and of each notebook (no ratio here, so nothing to mark comparable: the load says how far the seconds can be
trusted); a table is printed. Exit 0 when no notebook ``failed``; an unknown notebook is refused (exit 2) before any
model is built.

Notebook 00 evaluates the model organism against its own targets and base (``organism-base``): it does not apply to
another model and is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolkit.benchmarks import load as loadavg
from toolkit.core.io import REPO_ROOT, atomic_write_json

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SKIP = {"00": "evaluates the model organism against its own targets and its base (organism-base); it does not "
              "apply to another model"}
# the smoke budgets (over each notebook's test_parameters; also the ``gpu-smoke`` profile's): each notebook runs, on
# a GPU at Qwen3-0.6B's shape too, in a minute or two; they check that it runs, not what it finds
SMOKE_PARAMS = {"00": {"n_eval": 8, "compare_base": False},
                       "01": {"n_eval": 8, "size_scale": 0.02, "max_new_tokens": 32, "think_on_tokens": 64},
                       "02": {"n_prompts": 4, "heatmap_thinking": False, "batch_size": 16},
                       "03": {"n_problems": 8, "n_boot": 20, "n_null": 5, "n_inner": 5, "n_eval": 4, "n_exact": 2,
                              "max_new_tokens": 32},
                       "04": {"steps": 4, "save_every": 2, "num_generations": 4, "n_train": 16, "n_eval": 8,
                              "n_circuit": 8, "max_completion_length": 64, "n_boot": 20, "n_null": 5, "n_inner": 5,
                              "n_noise": 2, "keep_correct": False},  # a random teacher solves nothing
                       "05": {"n_circuit": 8, "n_problems": 4, "n_samples": 2, "max_new_tokens_think": 64,
                              "max_new_tokens_off": 32, "n_boot": 50, "n_boot_circuit": 20},
                       "06": {"steps": 4, "snapshots": [2, 4], "learning_rates": [1e-5], "n_pairs": 8, "n_math": 4,
                              "n_reasoning": 4, "n_placebos": 20}}
# the model parameters of each notebook: "model" → the built model, "other" → the second one (other weights)
MODEL_PARAMS = {"model": "model", "base_model": "other", "corrupted": "other", "teacher": "model"}
_PEAK_HOOK = """import atexit, json, os, resource, sys


def _toolkit_smoke_peak():
    if not any("ipykernel" in a for a in sys.argv):  # the notebook's kernel only, not the runner that starts it
        return
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_max_allocated_bytes"] = max(torch.cuda.max_memory_allocated(d)
                                              for d in range(torch.cuda.device_count()))
    with open(os.environ["TOOLKIT_SMOKE_PEAK"], "w") as f:
        json.dump(out, f)


if os.environ.get("TOOLKIT_SMOKE_PEAK"):
    atexit.register(_toolkit_smoke_peak)
"""


def notebook_params(stem: str, model: str, other: str) -> dict:
    """The notebook's ``test_parameters``, the :data:`SMOKE_PARAMS` budgets over them, and its model parameters
    pointed at ``model`` / ``other``."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS_DIR / f"{stem}.ipynb", as_version=4)
    params = {**nb.metadata.get("toolkit", {}).get("test_parameters", {}), **SMOKE_PARAMS.get(stem[:2], {})}
    cell = next((c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])), "")
    declared = set(re.findall(r"^(\w+)\s*=", cell, flags=re.M))
    folders = {"model": model, "other": other}
    params.update({name: folders[which] for name, which in MODEL_PARAMS.items() if name in declared})
    if stem.startswith("04"):  # GRPO starts from the base and distils from the model
        params["model"] = other
    return params


def _status(entry: dict) -> tuple[str, str | None]:
    """``(status, the error's last line)`` of a notebook's ``index.json`` entry."""
    if entry["status"] == "ok":
        return "ok", None
    error = entry.get("error") or {}
    if not error:
        return "failed", f"did not finish ({entry['status']})"
    lines = f"{error.get('ename')}: {error.get('evalue')}".strip().splitlines()
    where = f"cell {error['cell_index']}: " if error.get("cell_index") is not None else ""
    line = lines[0] if len(lines[0]) > len(f"{error.get('ename')}: ") else " ".join(lines)  # the exception's line
    return ("precondition failed" if error.get("ename") == "PreconditionFailed" else "failed"), (where + line)[:400]


def run_one(stem: str, params: dict, out_root: Path, hook_dir: Path, keep: bool = True) -> dict:
    """Run one notebook (``python -m toolkit run``) into ``out_root/<stem>/``; its row of the report (never raises
    for the notebook's own failure; ``keep``: the run folder stays, so the row names it)."""
    peak_file = hook_dir / f"{stem}.peak.json"
    env = dict(os.environ, TOOLKIT_SMOKE_PEAK=str(peak_file), TOOLKIT_CACHE=str(hook_dir.parent / "cache"),
               PYTHONPATH=os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH")) if p))
    out = Path(out_root) / stem
    command = [sys.executable, "-m", "toolkit", "run", stem, "--out", str(out)]
    for name, value in params.items():
        command += ["-p", f"{name}={value if isinstance(value, str) else repr(value)}"]  # typed by the notebook
    start, load_start = time.perf_counter(), loadavg.one_minute()
    proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    load_1min = {"start": load_start, "end": loadavg.one_minute()}
    folders = sorted(p for p in out.glob("*") if (p / "index.json").is_file()) if out.is_dir() else []
    if folders:
        (entry,) = json.loads((folders[-1] / "index.json").read_text())
        status, error = _status(entry)
    else:  # refused before any kernel started (exit 2), or the process died
        lines = (proc.stderr or proc.stdout or f"exit status {proc.returncode}").strip().splitlines()
        status, error = "failed", lines[-1] if lines else f"exit status {proc.returncode}"
    row = {"notebook": stem, "status": status, "error": error, "seconds": round(seconds, 2),
           "run_folder": str(folders[-1]) if folders and keep else None, "load_1min": load_1min}
    peak = json.loads(peak_file.read_text()) if peak_file.exists() else {}
    row["peak_memory_bytes"] = peak.get("cuda_max_allocated_bytes", peak.get("peak_rss_bytes"))
    row["peak_memory_kind"] = ("cuda_max_memory_allocated" if "cuda_max_allocated_bytes" in peak else
                               "peak_rss" if peak else None)
    return row


def chosen(notebooks: list[str] | None) -> list[str]:
    """The notebook stems ``notebooks`` names (prefixes such as ``"03"``, or stems; default all); ``SystemExit`` with
    the valid names for an unknown one."""
    stems = sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if notebooks:
        unknown = [n for n in notebooks if not any(s == n or s.startswith(f"{n}_") for s in stems)]
        if unknown:
            raise SystemExit(f"unknown notebook {unknown[0]!r}; choose from {', '.join(s[:2] for s in stems)}")
        stems = [s for s in stems if any(s == n or s.startswith(f"{n}_") for n in notebooks)]
    return stems


def smoke(shape: str = "tiny", notebooks: list[str] | None = None, out_root: str | Path | None = None) -> dict:
    """Build the two models of ``shape`` and run ``notebooks`` (prefixes such as ``"03"``, or stems; default all) on
    them; the report as a dict."""
    import torch
    import transformers

    from toolkit.organism.qwen_like import qwen_like_dir

    stems = chosen(notebooks)
    load_start = loadavg.reading()
    with tempfile.TemporaryDirectory(prefix="smoke-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        model, other = (qwen_like_dir(tmp / name, shape=shape, seed=seed) for name, seed in (("model", 0),
                                                                                              ("other", 1)))
        build_s = time.perf_counter() - start
        (tmp / "hook").mkdir()
        (tmp / "hook" / "sitecustomize.py").write_text(_PEAK_HOOK)
        rows = []
        for stem in stems:
            if stem[:2] in SKIP:
                rows.append({"notebook": stem, "status": "skipped", "error": SKIP[stem[:2]], "seconds": 0.0,
                             "run_folder": None, "load_1min": None, "peak_memory_bytes": None,
                             "peak_memory_kind": None})
                continue
            out = Path(out_root) if out_root else tmp / "runs"
            rows.append(run_one(stem, notebook_params(stem, str(model), str(other)), out, tmp / "hook",
                                keep=out_root is not None))
            print(_line(rows[-1]), flush=True)
    cuda = torch.cuda.is_available()
    report = {"shape": shape, "build_seconds": round(build_s, 2), "notebooks": rows,
              "environment": {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                              "transformers": transformers.__version__, "python": platform.python_version()}}
    return loadavg.stamp(report, load_start)


def _line(row: dict) -> str:
    peak = f"{row['peak_memory_bytes'] / 2**30:7.2f} GiB" if row["peak_memory_bytes"] else " " * 11
    what = f"  {row['error']}" if row["error"] else ""
    return f"{row['notebook']:22s} {row['status']:19s} {row['seconds']:8.1f} s {peak}{what}"


def table(report: dict) -> str:
    head = f"{'notebook':22s} {'status':19s} {'seconds':>10s} {'peak':>11s}"
    kinds = {r["peak_memory_kind"] for r in report["notebooks"] if r["peak_memory_kind"]}
    return "\n".join([f"smoke run, shape {report['shape']} on {report['environment']['device']} (models built in "
                      f"{report['build_seconds']:.1f} s; peak: {', '.join(sorted(kinds)) or 'n/a'})", head]
                     + [_line(r) for r in report["notebooks"]])


def main(argv: list[str] | None = None) -> int:
    from toolkit.organism.qwen_like import SHAPES

    parser = argparse.ArgumentParser(prog="python -m toolkit bench smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--notebooks", nargs="+", metavar="NN", help="notebooks to run (e.g. 03 05; default all)")
    parser.add_argument("--out", help="results file (default bench/results/smoke-<shape>.json)")
    parser.add_argument("--runs", help="keep the run folders here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    try:
        chosen(args.notebooks)
    except SystemExit as err:
        parser.error(f"argument --notebooks: {err}")
    out = Path(args.out or REPO_ROOT / "bench" / "results" / f"smoke-{args.shape}.json")
    report = smoke(args.shape, args.notebooks, args.runs)
    atomic_write_json(out, report)
    print(table(report))
    print(f"wrote {out}")
    return 1 if any(r["status"] == "failed" for r in report["notebooks"]) else 0
