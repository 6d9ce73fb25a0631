"""Training runs: the one checkpoint type, the kinds of run and their settings' checks, the run cache key, and
training a run of any kind with checkpoints, resume and reuse.

- :class:`Checkpoint`: one saved model of a run (step 0: the start model);
- :data:`KINDS` / :func:`register_kind`: the kinds of run by name (``grpo``: :mod:`toolkit.training.grpo`, ``sft``:
  :mod:`toolkit.training.traces`, ``distill``: :mod:`toolkit.training.distill`), each a frozen settings dataclass
  with a ``kind`` name and a ``make_trainer(output_dir, device, callbacks)`` method;
- :func:`check_settings`: bounds and choices every settings type shares;
- :func:`run_key` / :func:`run_dir`: the run's cache key and folder, ``<cache>/grpo-runs/<kind>-<run key>/``
  (``$TOOLKIT_CACHE`` or ``.cache/``, git-ignored);
- :func:`train`: train, resume or reuse one run. The trainer saves ``checkpoint-N`` folders (weights, tokenizer,
  optimizer and RNG state); :class:`~toolkit.training.callbacks.CheckpointLog` records each one, with the mean reward
  (GRPO) or loss (SFT) of the steps since the previous checkpoint, in ``checkpoints.json`` (written atomically).
  Training again with the same configuration resumes from the last complete checkpoint
  (:mod:`toolkit.training.checkpoints`); a finished run (``run.json``) is reused. Once a run finishes, optimizer,
  scheduler and RNG states are deleted from its checkpoints (weights stay). It runs unchanged over N processes
  (:mod:`toolkit.training.launch`).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from toolkit.core import cache
from toolkit.core.cache import cache_root, config_hash, model_fingerprint
from toolkit.core.io import atomic_write_json, publish_tree
from toolkit.core.progress import quiet_library_bars
from toolkit.training import compat, launch  # noqa: F401 -- compat: cpu:N restores (transformers 5.17 resumes)
from toolkit.training.callbacks import CHECKPOINT_METRICS, LOG_KEYS, CheckpointLog, ProgressCallback, checkpoint_records
from toolkit.training.checkpoints import resume_train, run_lock, strip_resume_state, weights_problem

KINDS: dict[str, type] = {}  # run kind -> its settings type (register_kind)


def register_kind(settings_type: type) -> type:
    """Class decorator: register a settings dataclass under its ``kind`` (``python -m toolkit train <kind>``)."""
    KINDS[settings_type.kind] = settings_type
    return settings_type


@dataclass
class Checkpoint:
    """One saved model of a training run. ``step`` 0 is the start model (``spec`` is then its name, e.g.
    ``"organism-base"``); later steps are model folders loadable with :func:`toolkit.core.models.load`.
    ``metrics`` holds what the trainer logged around this checkpoint (reward, accuracy, format, loss, …)."""

    step: int
    spec: str
    run: str = ""
    lr: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``<run>@<step>``, or the run's name alone for step 0 (the start model)."""
        return self.run if self.step == 0 else f"{self.run}@{self.step}"


# Bounds of the numeric settings every training run shares, by field name: (lowest, highest, lowest included).
BOUNDS = {
    "steps": (1, None, True), "save_every": (1, None, True), "batch_size": (1, None, True),
    "prompts_per_step": (1, None, True), "num_generations": (2, None, True), "max_completion_length": (1, None, True),
    "n_train": (1, None, True), "epochs": (1, None, True), "learning_rate": (0, None, False), "lr": (0, None, False),
    "warmup_ratio": (0, 1, True), "temperature": (0, None, False), "beta": (0, None, True),
    "eval_fraction": (0, 1, False), "weight_decay": (0, None, True), "seed": (0, None, True),
    "top_p": (0, 1, False), "max_new_tokens": (1, None, True), "samples_per_prompt": (1, None, True),
    "vllm_gpu_memory_utilization": (0, 1, False), "vllm_tensor_parallel_size": (1, None, True),
    "vllm_server_port": (1, 65535, True),
}
CHOICES = {"vllm_mode": ("colocate", "server")}  # text settings and their allowed values


def check_settings(settings) -> None:
    """Refuse a settings dataclass whose numeric fields (:data:`BOUNDS`, by name) have the wrong type or lie out of
    range, naming the field, its value and the valid range, whose text fields are not one of their
    :data:`CHOICES`, or whose ``steps`` is not a multiple of its
    ``save_every`` (the last step must be a checkpoint). Called by every training settings type on creation."""
    for f in dataclasses.fields(settings):
        if f.name not in BOUNDS:
            continue
        value, (low, high, closed) = getattr(settings, f.name), BOUNDS[f.name]
        integral = f.type in ("int", int)
        ok_type = isinstance(value, int) if integral else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or (not integral and not math.isfinite(value)):
            raise ValueError(f"{type(settings).__name__}.{f.name} must be {'an integer' if integral else 'a number'}, "
                             f"got {value!r}")
        below = value < low if closed else value <= low
        if below or (high is not None and value > high):
            bound = f"{'≥' if closed else '>'} {low}" + (f" and ≤ {high}" if high is not None else "")
            raise ValueError(f"{type(settings).__name__}.{f.name} must be {bound}, got {value!r}")
    for name, allowed in CHOICES.items():
        value = getattr(settings, name, allowed[0])
        if value not in allowed:
            raise ValueError(f"{type(settings).__name__}.{name} must be one of {', '.join(allowed)}, got {value!r}")
    steps, every = getattr(settings, "steps", None), getattr(settings, "save_every", None)
    if steps is not None and every is not None and steps % every:
        raise ValueError(f"{type(settings).__name__}.steps ({steps}) must be a multiple of save_every ({every}) so "
                         "the last step is a checkpoint")


@dataclass
class TrainingRun:
    """A finished run. ``log_history`` is the trainer's per-step log; ``seconds`` the training time of the session
    that finished it (resumed sessions count only their own time)."""

    kind: str
    path: Path
    settings: object  # the kind's settings dataclass (KINDS)
    checkpoints: list[Checkpoint]
    log_history: list[dict]
    seconds: float
    steps_trained: int
    reused: bool

    @property
    def steps_per_second(self) -> float:
        return self.steps_trained / self.seconds if self.seconds > 0 else float("nan")

    def curve(self, key: str = "reward") -> tuple[list[int], list[float]]:
        """Per-step ``(steps, values)`` of a logged quantity (a :data:`LOG_KEYS` name or a raw log key)."""
        key = LOG_KEYS.get(key, key)
        pts = [(e["step"], e[key]) for e in self.log_history if key in e]
        return [s for s, _ in pts], [v for _, v in pts]


def run_key(settings) -> str:
    """The run's cache key (:func:`toolkit.core.cache.config_hash`): the settings' kind and fields, start weights (and
    a distillation's teacher weights) and TRL version. A settings type's :attr:`pass_through` fields (GRPO's vLLM
    options) are left out at their defaults, so runs cached before those fields existed keep their key."""
    import trl

    defaults = {f.name: f.default for f in dataclasses.fields(settings)
                if f.name in getattr(type(settings), "pass_through", ())}
    fields = {k: v for k, v in dataclasses.asdict(settings).items() if defaults.get(k, ...) != v}
    payload = {"kind": type(settings).__name__, "settings": fields, "weights": model_fingerprint(settings.model),
               "trl": trl.__version__}
    if hasattr(settings, "teacher"):
        payload["teacher_weights"] = model_fingerprint(settings.teacher)
    return config_hash(payload)


def run_dir(settings) -> Path:
    """``<cache>/grpo-runs/<kind>-<run key>``: where the run's checkpoints and logs live."""
    return cache_root() / "grpo-runs" / f"{settings.kind}-{run_key(settings)}"


def _checkpoints(settings, kind: str, path: Path, log: list[dict]) -> list[Checkpoint]:
    return [Checkpoint(0, settings.model, run=kind)] + [
        Checkpoint(r["step"], str(path / r["checkpoint"]), run=kind, lr=settings.learning_rate,
                   metrics={k: r[k] for k in CHECKPOINT_METRICS if k in r}) for r in log]


def train(settings, device: str = "auto", callbacks: Sequence[TrainerCallback] = (),
          retrain: bool = False) -> TrainingRun:
    """Train (or resume, or reuse) one run of any registered kind (:data:`KINDS`: GRPO, SFT on traces,
    distillation); returns its checkpoints, step 0 being the start model. The settings build their own trainer
    (``settings.make_trainer(output_dir, device, callbacks)``), so this module knows no kind.

    A finished run with the same configuration is reused unless ``retrain`` (which clears the run); an unfinished one
    resumes from its last good checkpoint (:mod:`toolkit.training.checkpoints`). A second process with the same
    configuration waits for the first, then reuses its run. A damaged run record is reported, removed and the run
    trained again. ``callbacks`` are extra ``TrainerCallback``\\ s (the tests use one that interrupts training).
    Under a launcher every process calls it (:mod:`toolkit.training.launch`, whose checks run first).
    """
    launch.check_launch(settings, device)
    kind, path = settings.kind, run_dir(settings)
    with run_lock(path):
        meta = launch.on_main(_finished_run, path, retrain)
        if meta is not None:
            return TrainingRun(kind, path, settings, _checkpoints(settings, kind, path, meta["checkpoints"]),
                               meta["log_history"], meta["seconds"], meta["steps_trained"], reused=True)
        return _train(settings, kind, path, device, callbacks)


def _finished_run(path: Path, retrain: bool) -> dict | None:
    """The finished run's record (``None``: train; the folder cleared for ``retrain`` or a damaged record)."""
    recorded = (path / "run.json").exists()
    meta = None if retrain else cache.read_entry(path / "run.json", _read_run)
    if meta is None and (retrain or recorded):  # a finished run's checkpoints hold no resume state: start over
        shutil.rmtree(path, ignore_errors=True)
    return meta


def _read_run(file: Path) -> dict:
    """A finished run's record; :class:`~toolkit.core.cache.DamagedEntry` if a checkpoint it lists is damaged."""
    meta = cache.read_json(file, ("checkpoints", "log_history", "seconds", "steps_trained"))
    for record in meta["checkpoints"]:
        problem = weights_problem(file.parent / record["checkpoint"])
        if problem:
            raise cache.DamagedEntry(f"its {record['checkpoint']}: {problem}")
    return meta


def _train(settings, kind: str, path: Path, device: str, callbacks: Sequence[TrainerCallback]) -> TrainingRun:
    log_path = path / "checkpoints.json"
    with quiet_library_bars(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' gradient-checkpointing renames
        extra = [CheckpointLog(log_path, settings.save_every), ProgressCallback(kind.upper()), *callbacks]
        trainer = settings.make_trainer(path, device, extra)
        t0 = time.time()
        resume = resume_train(trainer, path)
        seconds = round(time.time() - t0, 2)
    first_step = int(resume.rsplit("-", 1)[1]) if resume else 0
    log = checkpoint_records(trainer.state.log_history, settings.save_every, trainer.state.global_step)
    missing = [r["checkpoint"] for r in log if not (path / r["checkpoint"] / "config.json").exists()]
    if trainer.state.global_step != settings.steps or missing:
        raise RuntimeError(f"{kind} run in {path} stopped at step {trainer.state.global_step} of {settings.steps}"
                           + (f" without {', '.join(missing)}" if missing else "") + "; run again to resume")
    meta = {"kind": kind, "settings": dataclasses.asdict(settings), "config_hash": run_key(settings),
            "checkpoints": log, "log_history": trainer.state.log_history, "seconds": seconds,
            "steps_trained": settings.steps - first_step, "resumed_from": resume}
    launch.main_only(_finish, path, log, meta)
    return TrainingRun(kind, path, settings, _checkpoints(settings, kind, path, log), trainer.state.log_history,
                       seconds, settings.steps - first_step, reused=False)


def _finish(path: Path, log: list[dict], meta: dict) -> None:
    """Write the checkpoint log and ``run.json`` (the run counts as finished from here), then strip resume state
    and give the folder the umask's modes (:func:`~toolkit.core.io.publish_tree`)."""
    atomic_write_json(path / "checkpoints.json", log)
    atomic_write_json(path / "run.json", meta)
    for ckpt in path.glob("checkpoint-*"):
        strip_resume_state(ckpt)
    publish_tree(path)  # the checkpoints' safetensors weights are written 0600; give them the umask's mode
