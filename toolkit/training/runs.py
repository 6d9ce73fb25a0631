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
