"""The one checkpoint type of every training run (GRPO, SFT, reasoning fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    import dataclasses
    import math

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
