"""Trainer callbacks shared by every training run: a progress bar over optimizer steps."""

from __future__ import annotations

from transformers import TrainerCallback

from toolkit.core.progress import progress


class ProgressCallback(TrainerCallback):
    """A :func:`toolkit.core.progress.progress` bar over optimizer steps, with the running loss."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress(total=state.max_steps, initial=state.global_step, desc=self.desc)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and "loss" in (logs or {}):
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()
