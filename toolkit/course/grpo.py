"""Lesson 04 (GRPO dynamics and emergent heads): the data and the checks of
``notebooks/exercises/04_grpo_dynamics.ipynb``. No training run and no model: every input is hand-made or simulated,
so the lesson runs in seconds.

1. :func:`check_group_advantages` — GRPO's group-relative advantage. The toolkit has no function of its own (its
   trainer is TRL's ``GRPOTrainer``), so the reference is :func:`reference_advantages`, the closed form of TRL 1.16's
   ``GRPOTrainer._generate_and_score_completions`` (``multi_objective_aggregation="sum_then_normalize"``, no
   unscorable completions): A = r − mean of r's group, divided by (std + 1e-4) with the Bessel-corrected std of the
   group (``scale_rewards="group"``, TRL's default) or of the whole batch (``"batch"``), or not divided (``"none"``);
2. :func:`check_head_split` — emergent / maintained / lost heads and the Jaccard index of a post-trained circuit
   against its base, against :func:`toolkit.core.units.compare_heads`;
3. :func:`check_cohorts` — cohorts (emergent heads by the checkpoint where they first appear) and each head's
   survival, against :func:`toolkit.methods.dynamics.head_dynamics` and :func:`~toolkit.methods.dynamics.head_survival`;
4. :func:`check_emergent_test` — the base-vs-itself margin, the emergent heads and the count p-value from simulated
   inclusion frequencies, against :func:`toolkit.evaluation.emergence.emergent_test`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from toolkit.core.units import Head, compare_heads
from toolkit.course.checks import CheckResult, check
from toolkit.evaluation import emergence
from toolkit.methods import dynamics

N_LAYERS, N_HEADS = 4, 4  # the organism's grid
STD_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)

# A hand-made run: the base circuit, then the circuit at each checkpoint (layer, head).
BASE = frozenset({(0, 1), (1, 0), (2, 3), (3, 2)})
SNAPSHOTS = {
    10: frozenset({(0, 1), (1, 0), (2, 3), (3, 2), (1, 2)}),
    20: frozenset({(0, 1), (1, 0), (3, 2), (1, 2), (2, 0), (3, 3)}),
    30: frozenset({(0, 1), (1, 0), (3, 2), (2, 0), (0, 3)}),
    40: frozenset({(0, 1), (3, 2), (2, 0), (0, 3), (1, 2)}),
}


@dataclass
class Data:
    """``rewards`` ``[groups × group_size]`` float32 (group-major, as TRL lays them out); the hand-made run
    (``base``, ``snapshots``); simulated inclusion frequencies ``[L, H]`` of a post-trained model and its base, and
    the null's two base resamples ``[R, L, H]``."""

    rewards: torch.Tensor
    group_size: int
    base: frozenset[Head]
    snapshots: dict[int, frozenset[Head]]
    f_post: np.ndarray
    f_base: np.ndarray
    null_first: np.ndarray
    null_second: np.ndarray
    n_inner: int


def simulated_rewards(n_groups: int = 5, group_size: int = 6, seed: int = 0) -> torch.Tensor:
    """0/1 correctness plus a 0.1 format bonus per completion; every completion of group 0 is wrong and well
    formatted (one reward for the whole group: no signal)."""
    rng = np.random.default_rng(seed)
    right = rng.random((n_groups, group_size)) < rng.random((n_groups, 1))
    right[0] = False
    fmt = rng.random((n_groups, group_size)) < 0.7
    fmt[0] = True
    return torch.tensor((right + 0.1 * fmt).ravel(), dtype=torch.float32)


def simulated_inclusion(n_null: int = 200, n_inner: int = 50, seed: int = 0):
    """Inclusion frequencies (shares of ``n_inner`` bootstrap circuits): the base's true rates p, two independent
    resamples per null replicate, the base itself, and a post-trained model with three heads' rates raised (one,
    (0, 3), by 0.15 only: from 0.5 to 0.65)."""
    rng = np.random.default_rng(seed)
    p = rng.choice([0.02, 0.1, 0.5, 0.9, 0.98], size=(N_LAYERS, N_HEADS))
    draw = lambda q, *shape: rng.binomial(n_inner, q, size=(*shape, N_LAYERS, N_HEADS)) / n_inner  # noqa: E731
    p[0, 3] = 0.5
    post_p = p.copy()
    post_p[1, 2], post_p[2, 0], post_p[0, 3] = 0.95, 0.7, 0.65
    return draw(post_p), draw(p), draw(p, n_null), draw(p, n_null), n_inner


def setup(seed: int = 0) -> Data:
    rewards = simulated_rewards(seed=seed)
    f_post, f_base, first, second, n_inner = simulated_inclusion(seed=seed)
    return Data(rewards, 6, BASE, dict(SNAPSHOTS), f_post, f_base, first, second, n_inner)


# ---- 1. the group-relative advantage ------------------------------------------------------------------------------

def reference_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """TRL 1.16's advantage (module docstring): ``rewards`` group-major ``[groups × group_size]``."""
    grouped = rewards.view(-1, group_size)
    advantages = rewards - grouped.mean(1).repeat_interleave(group_size)
    if scale == "none":
        return advantages
    std = grouped.std(1).repeat_interleave(group_size) if scale == "group" else rewards.std().expand_as(rewards)
    return advantages / (std + STD_EPS)


def check_group_advantages(group_advantages: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``group_advantages(rewards, group_size, scale)`` → ``[groups × group_size]`` float32, for each of
    ``scale`` = ``"group"``, ``"batch"``, ``"none"``."""
    def run(fn):
        return lambda r: {scale: fn(r.clone(), data.group_size, scale) for scale in ("group", "batch", "none")}

    return check(run(group_advantages), run(reference_advantages), data.rewards, name="group_advantages",
                 atol=1e-5, rtol=1e-5, verbose=verbose)


# ---- 2. emergent, maintained and lost heads -----------------------------------------------------------------------

def _final(data: Data) -> frozenset[Head]:
    return data.snapshots[max(data.snapshots)]


def check_head_split(head_split: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``head_split(post, base)`` (sets of ``(layer, head)``) → ``{"emergent", "maintained", "lost"}`` (sorted lists)
    and ``"jaccard"``, on the run's final circuit against its base and on two edge cases (an empty post set,
    identical sets)."""
    cases = {"final vs base": (_final(data), data.base), "empty post": (frozenset(), data.base),
             "identical": (data.base, data.base)}

    def learner(_):
        return {name: head_split(set(post), set(base)) for name, (post, base) in cases.items()}

    def reference(_):
        out = {}
        for name, (post, base) in cases.items():
            c = compare_heads(post, base, N_LAYERS, N_HEADS)
            out[name] = {"emergent": sorted(c.only_a), "maintained": sorted(c.shared), "lost": sorted(c.only_b),
                         "jaccard": c.jaccard}
        return out

    return check(learner, reference, None, name="head_split", atol=1e-12, rtol=1e-9, verbose=verbose)


# ---- 3. cohorts and survival --------------------------------------------------------------------------------------

def _label(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def _readable(out: dict) -> dict:
    """Tuple heads → ``"L1H2"`` and steps → strings, so a mismatch names them."""
    if not isinstance(out, dict) or set(out) != {"cohorts", "survival"}:
        return out
    cohorts, survival = out["cohorts"], out["survival"]
    if not isinstance(cohorts, dict) or not isinstance(survival, dict):
        return out
    return {"cohorts": {f"step {s}": sorted(map(tuple, hs)) for s, hs in cohorts.items()},
            "survival": {_label(tuple(h)): v for h, v in survival.items()}}


def check_cohorts(cohorts_and_survival: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``cohorts_and_survival(base, snapshots)`` → ``{"cohorts": {step: sorted heads first emergent there},
    "survival": {head: fraction of the later checkpoints at which it is still emergent}}``."""
    def learner(_):
        return _readable(cohorts_and_survival(set(data.base), {s: set(h) for s, h in data.snapshots.items()}))

    def reference(_):
        dyn = dynamics.head_dynamics(data.base, data.snapshots)
        return _readable({"cohorts": {c: sorted(hs) for c, hs in dyn.cohorts.items()},
                          "survival": dynamics.head_survival(dyn)})

    return check(learner, reference, None, name="cohorts_and_survival", atol=1e-12, rtol=1e-9, verbose=verbose)


# ---- 4. emergent heads against the base-vs-itself null ------------------------------------------------------------

def reference_emergent(data: Data, level: float = emergence.NULL_LEVEL) -> dict:
    """:func:`toolkit.evaluation.emergence.emergent_test` on the simulated frequencies (bootstraps stood in for by
    their inclusion grids; the fields only the change score reads are zeros)."""
    zeros = np.zeros((1, N_LAYERS, N_HEADS))

    def boot(f):
        return SimpleNamespace(top_n=1, graph=None, n_boot=1, head_inclusion=f, importance=zeros,
                               full_importance=zeros[0], full_heads=frozenset())

    def reps(f):
        return emergence.Replicates(f, f > 0.5, np.zeros_like(f), data.n_inner)

    null = emergence.BaseNull(1, level, reps(data.null_first), reps(data.null_second))
    test = emergence.emergent_test(boot(data.f_post), boot(data.f_base), null)
    return {"margin": test.margin, "heads": test.heads, "count_p": test.count_p}


def check_emergent_test(emergent_heads: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``emergent_heads(f_post, f_base, null_diff, level)`` (``[L, H]``, ``[L, H]``, ``[R, L, H]``) →
    ``{"margin", "heads" (sorted by gain, largest first), "count_p"}``, at levels 0.95 and 0.8."""
    diff = data.null_second - data.null_first

    def learner(_):
        return {f"level {lv}": emergent_heads(data.f_post.copy(), data.f_base.copy(), diff.copy(), lv)
                for lv in (0.95, 0.8)}

    def reference(_):
        return {f"level {lv}": reference_emergent(data, lv) for lv in (0.95, 0.8)}

    return check(learner, reference, None, name="emergent_heads", atol=1e-12, rtol=1e-9, verbose=verbose)
