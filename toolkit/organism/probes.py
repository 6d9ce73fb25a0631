"""Held-out probe pools of the organism: the math problems that evaluations use and that training must never see.

- :func:`math_problems`: held-out problems split evenly over the math tasks (linear equations, arithmetic), drawn
  from the organism's evaluation seed by default (:data:`EVAL_SEED`: its training never drew them).
- :func:`reasoning_probes`: held-out problems from a second seed (:data:`REASONING_SEED`), whose reference think-on
  traces are teacher-forced to read reasoning activations and next-token distributions.
- :func:`held_out_prompts`: every prompt of both pools (the first :data:`MAX_HELD_OUT` of each), the exclusion set
  of reasoning fine-tuning; :func:`reasoning_records` draws fresh think-on training traces outside it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from toolkit.organism import tasks
from toolkit.organism.recipe import Recipe

EVAL_SEED = Recipe().eval_seed  # the organism's held-out prompts: its training never drew them
MATH_TASKS = tasks.MATH  # linear equations and arithmetic (the task generators name them), in this order
REASONING_SEED = EVAL_SEED + 10  # held-out math problems whose reference traces probe reasoning activations and KL
MAX_HELD_OUT = 400  # held-out problems per seed that training excludes


def math_problems(n: int, seed: int = EVAL_SEED, kinds: Sequence[str] = MATH_TASKS) -> list[tasks.Example]:
    """``n`` held-out math problems, split evenly over ``kinds`` (the organism's evaluation problems by default)."""
    bad = [k for k in kinds if k not in MATH_TASKS]
    if bad or not kinds:
        raise ValueError(f"math kinds must be a non-empty subset of {MATH_TASKS}, got {list(kinds)}")
    counts = [len(part) for part in np.array_split(np.arange(n), len(kinds))]
    offsets = {"linear": 0, "arithmetic": 1}
    return [ex for kind, c in zip(kinds, counts) if c for ex in tasks.held_out(kind, c, seed + offsets[kind])]


def reasoning_probes(n: int) -> list[tasks.Example]:
    """``n`` (≤ 400) held-out math problems, distinct from the evaluation problems' seed, whose reference think-on
    traces are teacher-forced to measure reasoning activations and KL; reasoning fine-tuning never trains on them."""
    if not 1 <= n <= MAX_HELD_OUT:
        raise ValueError(f"n must be in 1..{MAX_HELD_OUT} (the problems reasoning training excludes), got {n}")
    return math_problems(n, seed=REASONING_SEED)


def held_out_prompts() -> set[str]:
    """Every math prompt that reasoning fine-tuning must not train on: the first 400 evaluation problems and the first
    400 reasoning probes."""
    return {ex.prompt for seed in (EVAL_SEED, REASONING_SEED) for ex in math_problems(MAX_HELD_OUT, seed=seed)}


def reasoning_records(n: int, seed: int, kinds: Sequence[str] = MATH_TASKS,
                      exclude: set[str] = frozenset(), style: str = "careful") -> list[dict]:
    """``n`` fresh think-on math training records ``{"prompt", "answer", "task"}``: the answer is the whole think-on
    completion (scratchpad in ``style``, careful or brief, and result). Prompts in ``exclude`` (the evaluation
    problems) are skipped. The problems depend on ``seed`` only, so two styles with one seed train on the same
    problems."""
    if style not in tasks.STYLES:
        raise ValueError(f"unknown scratchpad style {style!r}; use one of {tasks.STYLES}")
    rng, out = random.Random(seed), []
    while len(out) < n:
        ex = tasks.sample(rng.choice(list(kinds)), rng)
        if ex.prompt not in exclude:
            out.append({"prompt": ex.prompt, "answer": tasks.completion(ex, True, style), "task": ex.task})
    return out
