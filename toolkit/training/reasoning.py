"""Reasoning fine-tuning (notebook 06): SFT of a model on think-on math traces only — no refusal examples — with
snapshots along each run, so runs × snapshots give checkpoints of increasing strength.

- Data: fresh linear-equation and addition/subtraction problems with their scratchpads
  (:func:`toolkit.organism.probes.reasoning_records`), never one of the held-out evaluation or probe problems
  (:func:`toolkit.organism.probes.held_out_prompts`).
- Path: the TRL SFT path of :mod:`toolkit.training.sft` with ``enable_thinking=True``: think-on prompts, loss on the
  completion ``<think>\\n{steps}\\n</think>\\n\\n{answer}<|im_end|>`` only; AdamW, cosine schedule, 10% warmup.
- Each :class:`ReasoningRun` saves the model after each step in its ``snapshots``
  (``<cache>/reasoning/<name>/step-<k>``). A run is reused when its configuration hash (base weights, run settings,
  data) is unchanged; an interrupted run resumes from its last complete trainer checkpoint
  (:mod:`toolkit.training.checkpoints`).
- :func:`reasoning_checkpoints` returns :class:`toolkit.training.runs.Checkpoint` s: the base model first (step 0,
  run ``"base"``), then every snapshot of every run (label ``<run>@<step>``).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from toolkit.core.cache import cache_root, config_hash, model_fingerprint, read_entry, read_json, save_model_folder
from toolkit.core.io import atomic_write_json, recover_dir, replace_dir
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.organism.probes import MATH_TASKS, held_out_prompts, reasoning_records
from toolkit.organism.tasks import STYLES
from toolkit.training import sft
from toolkit.training.checkpoints import resume_train, run_lock
from toolkit.training.runs import Checkpoint, check_settings


@dataclass(frozen=True)
class ReasoningRun:
    """One reasoning fine-tuning run: ``steps`` optimizer steps of ``batch_size`` fresh think-on math traces at peak
    learning rate ``lr`` (cosine schedule, 10% warmup), with the model saved after each step in ``snapshots``. The
    traces' scratchpads are in ``style``: ``"careful"`` (every step written out) or ``"brief"`` (effort-minimising:
    steps skipped), the RIM paper's two reasoning patterns."""

    name: str
    lr: float
    steps: int
    snapshots: tuple[int, ...]
    batch_size: int = 16
    kinds: tuple[str, ...] = MATH_TASKS
    seed: int = 0
    style: str = "careful"

    def __post_init__(self):
        check_settings(self)
        if self.style not in STYLES:
            raise ValueError(f"run {self.name!r}: unknown scratchpad style {self.style!r}; use one of {STYLES}")
        bad = [s for s in self.snapshots if not 1 <= s <= self.steps]
        if bad or not self.snapshots:
            raise ValueError(f"run {self.name!r}: snapshots must be steps in 1..{self.steps}, got {self.snapshots}")


def runs_from_rates(learning_rates: Sequence[float], steps: int, snapshots: Sequence[int], batch_size: int = 16,
                    kinds: Sequence[str] = MATH_TASKS, styles: Sequence[str] = ("careful",)) -> list[ReasoningRun]:
    """One :class:`ReasoningRun` per style and learning rate (named ``<style>-lr<rate>-<steps>x<batch>``), all with
    the same steps and snapshots."""
    shots = tuple(sorted({int(s) for s in snapshots}))
    if not styles or not learning_rates:
        raise ValueError("need at least one style and one learning rate")
    return [ReasoningRun(f"{style}-lr{lr:g}-{steps}x{batch_size}", float(lr), int(steps), shots, int(batch_size),
                         tuple(kinds), style=style) for style in styles for lr in learning_rates]


def style_of(run_name: str) -> str:
    """The scratchpad style of a run named by :func:`runs_from_rates` (``""`` for another name, e.g. ``"base"``)."""
    head = run_name.split("-", 1)[0]
    return head if head in STYLES else ""


def reasoning_root() -> Path:
    """Where reasoning fine-tuned models are cached: ``<cache>/reasoning`` (git-ignored)."""
    return cache_root() / "reasoning"


class SnapshotCallback(TrainerCallback):
    """Saves the model (safetensors) and tokenizer to ``<folder>/step-<k>`` after each step ``k`` in ``steps``;
    shows a progress bar over steps."""

    def __init__(self, folder: Path, steps: Sequence[int], desc: str):
        self.folder, self.steps, self.desc, self.bar = folder, set(steps), desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress(total=state.max_steps, initial=state.global_step, desc=self.desc)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.bar.update(1)
        if state.global_step in self.steps:
            save_model_folder(model, processing_class, self.folder / f"step-{state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def _run_hash(spec: str, run: ReasoningRun, train: list[dict], validation: list[dict]) -> str:
    return config_hash({"model": spec, "weights": model_fingerprint(spec), "run": dataclasses.asdict(run),
                        "train": train, "validation": validation})


def reasoning_finetune(spec: str, run: ReasoningRun, device: str = "auto", retrain: bool = False,
                       n_validation: int = 16) -> dict:
    """Fine-tune the model ``spec`` on think-on math traces (no refusal examples) and save the snapshots in
    ``<cache>/reasoning/<name>/step-<k>``. Returns the run's metadata: ``snapshots`` (step → folder), ``history``
    (train/validation loss on math traces at each evaluation), ``seconds``, ``reused``.

    A run saved with the same configuration (base weights, run settings, data) is reused unless ``retrain`` (which
    also clears an unfinished run); an interrupted run resumes from its last complete training checkpoint. A damaged
    ``reasoning.json`` is reported and the run trained again."""
    exclude = held_out_prompts()
    train = reasoning_records(run.steps * run.batch_size, seed=run.seed * 7919 + 11, kinds=run.kinds, exclude=exclude,
                              style=run.style)
    validation = reasoning_records(n_validation, seed=run.seed * 7919 + 12, kinds=run.kinds, exclude=exclude,
                                   style=run.style)
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", spec).strip("_")
    name = run.name if spec == "organism" else f"{slug}--{run.name}"
    path = recover_dir(reasoning_root() / name)
    run_hash = _run_hash(spec, run, train, validation)
    work = cache_root() / "reasoning-runs" / f"{name}-{run_hash}"
    with run_lock(path):
        if retrain:
            shutil.rmtree(work, ignore_errors=True)
        meta = None if retrain else read_entry(path / "reasoning.json",
                                               lambda p: read_json(p, ("config_hash", "snapshots", "history")))
        if meta is not None and meta["config_hash"] == run_hash and all(
                (path / f"step-{s}" / "config.json").exists() for s in run.snapshots):
            return meta | {"reused": True}
        return _train(spec, run, name, path, work, run_hash, train, validation, device)


def _train(spec: str, run: ReasoningRun, name: str, path: Path, work: Path, run_hash: str, train: list[dict],
           validation: list[dict], device: str) -> dict:
    snap_dir = work / "snapshots"
    preset = sft.Preset(run.name, n_train=len(train), epochs=1, lr=run.lr, original="reasoning traces")
    settings = sft.TrainSettings(batch_size=run.batch_size, eval_fraction=0.25,
                                 save_every=max(10, run.steps // 2), seed=run.seed)
    with quiet_library_bars():
        trainer = sft.make_trainer(spec, preset, train, validation, work / "trainer", device, settings,
                                   [SnapshotCallback(snap_dir, run.snapshots, name)], enable_thinking=True)
        t0 = time.time()
        resume_train(trainer, work / "trainer")
        seconds = round(time.time() - t0, 1)
    missing = [s for s in run.snapshots if not (snap_dir / f"step-{s}" / "config.json").exists()]
    if missing:
        raise RuntimeError(f"run {name}: training ended at step {trainer.state.global_step} without the snapshots "
                           f"{missing}; delete {work} and run again")
    history = [{"step": r["step"], "train_loss": r["train_loss"], "validation_loss": r["eval_loss"]}
               for r in sft.history_from_log(trainer.state.log_history)]
    meta = {"name": name, "base_model": spec, "config_hash": run_hash, "run": dataclasses.asdict(run),
            "seconds": seconds, "history": history,
            "snapshots": {str(s): str(path / f"step-{s}") for s in run.snapshots}}
    atomic_write_json(snap_dir / "reasoning.json", meta)
    replace_dir(snap_dir, path)
    shutil.rmtree(work, ignore_errors=True)
    return meta | {"reused": False}


def reasoning_checkpoints(spec: str, runs: Sequence[ReasoningRun], device: str = "auto",
                          retrain: bool = False) -> tuple[list[Checkpoint], dict[str, dict]]:
    """Train (or reuse) every run; returns the checkpoints (the base model first, as step 0 of run ``"base"``) and
    each run's metadata by name."""
    if not runs:
        raise ValueError("need at least one reasoning run")
    checkpoints = [Checkpoint(0, spec, run="base", lr=0.0)]
    metas = {}
    for run in runs:
        meta = reasoning_finetune(spec, run, device, retrain)
        metas[run.name] = meta
        checkpoints += [Checkpoint(s, meta["snapshots"][str(s)], run=run.name, lr=run.lr) for s in run.snapshots]
    return checkpoints, metas
