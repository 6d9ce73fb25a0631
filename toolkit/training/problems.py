"""The problem pools of notebook 04's training runs: training problems drawn apart from the held-out problems that
circuits and accuracy are measured on (:func:`eval_problems`), so no run ever trains on an evaluation problem.

Problems are the organism's task generators (:func:`toolkit.organism.tasks.held_out`), the tasks interleaved in
turn, deterministic from a seed: :data:`TRAIN_SEED` for training, :data:`CHECKPOINT_EVAL_SEED` for the held-out pool
(not the organism's own held-out seed, :data:`toolkit.organism.probes.EVAL_SEED`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from toolkit.organism import tasks
from toolkit.organism.probes import MATH_TASKS
from toolkit.training.rewards import ANSWER_PATTERNS

TRAIN_SEED, CHECKPOINT_EVAL_SEED = 4_004, 4_044  # training prompts and the held-out evaluation/circuit prompts


def problems(task_names: Sequence[str], n: int, seed: int, exclude: set[str] = frozenset()) -> list[tasks.Example]:
    """``n`` distinct problems, the tasks interleaved in turn (deterministic from ``seed``)."""
    if n < 1:
        raise ValueError(f"need at least one problem, got n={n}")
    unknown = [t for t in task_names if t not in ANSWER_PATTERNS]
    if not task_names or unknown:
        raise ValueError(f"tasks must be a non-empty subset of {', '.join(ANSWER_PATTERNS)}; got {list(task_names)}")
    per_task = {t: tasks.held_out(t, math.ceil(n / len(task_names)), seed + i, exclude)
                for i, t in enumerate(task_names)}
    mixed = [per_task[t][i] for i in range(math.ceil(n / len(task_names))) for t in task_names]
    return mixed[:n]


def eval_problems(task_names: Sequence[str] = MATH_TASKS, n: int = 32) -> list[tasks.Example]:
    """Held-out problems (never in a training set): for circuits and accuracy per checkpoint."""
    return problems(task_names, n, CHECKPOINT_EVAL_SEED)


def train_problems(task_names: Sequence[str], n: int) -> list[tasks.Example]:
    """``n`` training problems of ``task_names``, none of them among the first 400 held-out ones."""
    held = {e.prompt for e in eval_problems(task_names, 400)}
    return problems(task_names, n, TRAIN_SEED, exclude=held)
