"""Trainer callbacks shared by every training run: a progress bar over optimizer steps, and the checkpoint log.

Both act on the main process only (``state.is_world_process_zero``) when a run is split over several processes
(:mod:`toolkit.training.launch`): one bar, one writer of ``checkpoints.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from toolkit.core.io import atomic_write_json
from toolkit.core.progress import progress


class ProgressCallback(TrainerCallback):
    """A :func:`toolkit.core.progress.progress` bar over optimizer steps, with the running loss (main process only).
    """

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress(total=state.max_steps, initial=state.global_step, desc=self.desc,
                            disable=not state.is_world_process_zero)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and "loss" in (logs or {}):
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


# ---- checkpoint log ---------------------------------------------------------------------------------------------

LOG_KEYS = {"reward": "reward", "accuracy": "rewards/accuracy_reward/mean", "format": "rewards/format_reward/mean",
            "loss": "loss", "completion_length": "completions/mean_length"}
CHECKPOINT_METRICS = ("reward", "accuracy", "format", "loss")  # the window means a Checkpoint's metrics keep


def window_means(log_history: Sequence[dict], start: int, end: int) -> dict[str, float]:
    """Mean of each :data:`LOG_KEYS` quantity over the logged steps in ``(start, end]`` (keys absent if never logged).
    """
    out = {}
    for name, key in LOG_KEYS.items():
        values = [e[key] for e in log_history if start < e.get("step", -1) <= end and key in e]
        if values:
            out[name] = float(sum(values) / len(values))
    return out


def checkpoint_records(log_history: Sequence[dict], save_every: int, last_step: int) -> list[dict]:
    """One record per checkpoint up to ``last_step``: ``step``, ``checkpoint`` (folder name) and the means of the
    steps since the previous checkpoint (:func:`window_means`)."""
    return [{"step": step, "checkpoint": f"checkpoint-{step}", **window_means(log_history, step - save_every, step)}
            for step in range(save_every, last_step + 1, save_every)]


class CheckpointLog(TrainerCallback):
    """Writes ``log_path`` (atomic JSON list, one record per saved checkpoint, see :func:`checkpoint_records`) at each
    save, on the main process. Built from the trainer state's ``log_history``, which is restored on resume, and never
    read back: an interrupted run ends with the same log as an uninterrupted one, and a damaged log is simply
    rewritten."""

    def __init__(self, log_path: Path, save_every: int):
        self.log_path, self.save_every = Path(log_path), save_every

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            atomic_write_json(self.log_path, checkpoint_records(state.log_history, self.save_every, state.global_step))
