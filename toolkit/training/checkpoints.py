"""Resuming a Trainer run from its last *good* checkpoint, and the lock that keeps two processes out of one run.

transformers writes ``checkpoint-N/`` in place (weights, then optimizer, scheduler, RNG state, ``trainer_state.json``
last). A process killed during that save leaves a folder that looks like the latest checkpoint but cannot be resumed
from. :func:`last_good_checkpoint` counts a checkpoint only when it is complete — ``trainer_state.json`` parses,
``optimizer.pt`` and ``scheduler.pt`` exist, and every weights file's safetensors header opens — and removes an
incomplete one with a warning that names it and what it lacks, so the run falls back to the previous checkpoint (or
starts again) instead of failing on every rerun or resuming with a fresh optimizer.

:func:`resume_train` is the one way every training run here (fine-tuning, GRPO, reasoning traces) calls
``trainer.train``: from the last good checkpoint, without a second start-of-training evaluation on resume (so a
resumed run's history equals an uninterrupted one's). :func:`run_lock` is the lock (``<run folder>.lock``) a run holds
while it trains into its cache entry: a second process with the same configuration waits, then finds the result.

*Several processes* (``torchrun``/``accelerate launch``, :mod:`toolkit.training.launch`): only the main process
takes the lock (the others wait for it at a barrier) and only it looks for, and removes, incomplete checkpoints; every
process resumes from the checkpoint it found. A checkpoint's optimizer state is ``optimizer.pt`` (one process or DDP),
``optimizer.bin`` or an ``optimizer*/`` folder (FSDP) or a ``global_step*/`` folder (DeepSpeed);
:func:`strip_resume_state` removes all of them, with the scheduler and every process's RNG state, once a run is done.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

from toolkit.core.locks import FileLock
from toolkit.training.launch import on_main, process_state

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RESUME_FILES = ("trainer_state.json", "scheduler.pt")
OPTIMIZER_STATE = ("optimizer.pt", "optimizer.bin", "optimizer*/", "global_step*/")  # one process/DDP, FSDP, DeepSpeed


def _resume_state(folder: Path) -> list[Path]:
    """The optimizer-state files and folders of the checkpoint ``folder`` (any of :data:`OPTIMIZER_STATE`)."""
    return [p for pattern in OPTIMIZER_STATE for p in folder.glob(pattern.rstrip("/"))
            if p.is_dir() == pattern.endswith("/")]


def weights_problem(folder: str | Path) -> str | None:
    """Why the model folder ``folder`` has no usable weights (no ``config.json``, no safetensors, a file whose
    header does not open), or ``None``."""
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return "config.json missing"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error type for a damaged header
            return f"{file.name} does not open ({str(err).splitlines()[0][:120]})"
    return None


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` (a ``checkpoint-N``) cannot be resumed from, or ``None`` when it is complete."""
    folder = Path(folder)
    missing = [name for name in RESUME_FILES if not (folder / name).is_file()]
    if not _resume_state(folder):
        missing.insert(1, "optimizer state (optimizer.pt)")
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        json.loads((folder / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"trainer_state.json unreadable ({type(err).__name__})"
    return weights_problem(folder)


def last_good_checkpoint(output_dir: str | Path) -> str | None:
    """The latest complete ``checkpoint-N`` in ``output_dir`` (``None`` if there is none). Incomplete ones after it
    are removed, each with a warning naming it and what it lacks."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in output_dir.iterdir()
                    if p.is_dir() and (m := CHECKPOINT.match(p.name))), reverse=True)
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        warnings.warn(f"checkpoint {folder} is incomplete ({problem}; a process was probably stopped while saving "
                      "it): removed, resuming from the one before", stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)
    return None


def resume_train(trainer, output_dir: str | Path) -> str | None:
    """``trainer.train()`` from the last good checkpoint in ``output_dir`` (from scratch when there is none), with
    ``eval_on_start`` off when resuming (that evaluation was logged by the interrupted session). Returns the
    checkpoint resumed from (found by the main process, used by all)."""
    resume = on_main(last_good_checkpoint, output_dir)
    if resume is not None:
        trainer.args.eval_on_start = False
    trainer.train(resume_from_checkpoint=resume)
    return resume


@contextmanager
def run_lock(run_folder: str | Path):
    """``with run_lock(folder):`` holds the lock of the training run writing ``run_folder`` (the file
    ``<run_folder>.lock``; waits for a live holder). With several processes the main process takes it and the others
    wait at a barrier until it has; all leave together."""
    run_folder = Path(run_folder)
    state = process_state()
    lock = (FileLock(run_folder.with_name(run_folder.name + ".lock"), what=f"training into {run_folder}", wait=True)
            if state.is_main_process else nullcontext())
    with lock:
        state.wait_for_everyone()
        yield
        state.wait_for_everyone()


def strip_resume_state(checkpoint: str | Path) -> None:
    """Remove what only a resume needs from ``checkpoint`` (optimizer, scheduler, RNG states); the weights stay."""
    checkpoint = Path(checkpoint)
    for path in [*_resume_state(checkpoint), checkpoint / "scheduler.pt", *checkpoint.glob("rng_state*.pth"),
                 *checkpoint.glob("pytorch_model_fsdp*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
