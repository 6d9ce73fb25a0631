"""Notebook 05's metrics over sampled answers (:class:`toolkit.studies.think_on_off.Samples`): per problem pass@k and
success@k for k = 1…n (:func:`~toolkit.core.answers.per_problem_at_k`), pooled over a group's conditions; means over
problems with bootstrap intervals (:func:`curves`, :func:`table`); paired differences against think-off, the paper's
Table 3, and against the random-head placebo (:func:`paired_effect`, :func:`intervention_effects`); :func:`at_k`
gathers the notebook's curves and think-off's success@k over sample orders (:class:`AtK`).

**pass@k and success@k estimate the same number.** For one problem with n exchangeable samples (independent draws
are exchangeable) of which c are correct, success@k of the first k samples is 1 unless all k are wrong, which happens
for C(n-c, k) of the C(n, k) equally likely k-subsets: E[success@k | c] = 1 - C(n-c, k)/C(n, k) = pass@k. Averaged
over all n! orders of the samples, success@k *equals* pass@k exactly (each k-subset is the first k equally often);
:func:`success_over_orders` averages it over all orders (small n) or over random ones. The two differ only by the
noise of the sampling order: in expectation a model cannot be better at success@k and worse at pass@k."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from toolkit.core.answers import per_problem_at_k
from toolkit.core.stats import bootstrap_ci, paired_difference_ci
from toolkit.evaluation import causal
from toolkit.studies.think_on_off import THINK_OFF, Samples


def groups(results: Mapping[str, Samples]) -> list[str]:
    """The condition groups in first-seen order (the table's rows)."""
    return causal.groups(s.condition for s in results.values())


def group_matrix(results: Mapping[str, Samples], group: str, task: str, metric: str = "pass") -> np.ndarray:
    """``[problems, n]`` per-problem pass@k / success@k of ``group``, pooled per problem over its conditions."""
    names = {c.name for c in causal.members([s.condition for s in results.values()], group)}
    members = [s for s in results.values() if s.condition.name in names]
    if any(task not in s.correct for s in members):
        raise KeyError(f"task {task!r} was not sampled for group {group!r}; tasks: {list(members[0].correct)}")
    shapes = {s.correct[task].shape for s in members}
    if len(shapes) != 1:
        raise ValueError(f"conditions of group {group!r} sampled different problem/sample counts on {task}: {shapes}")
    return causal.pool([per_problem_at_k(s.correct[task], metric) for s in members])


def curves(results: Mapping[str, Samples], metric: str = "pass", n_boot: int = 1000, level: float = 0.95,
           seed: int = 0) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{group: {task: {"k", "estimate", "low", "high"}}}``: mean pass@k or success@k over problems for k = 1…n,
    with percentile-bootstrap intervals over problems (the same resamples for every k and group)."""
    out: dict = {}
    for group in groups(results):
        out[group] = {}
        for task in next(iter(results.values())).correct:
            m = group_matrix(results, group, task, metric)
            cis = [bootstrap_ci(m[:, j], n_boot=n_boot, level=level, seed=seed) for j in range(m.shape[1])]
            out[group][task] = {"k": list(range(1, m.shape[1] + 1)),
                                **{key: [c[key] for c in cis] for key in ("estimate", "low", "high")}}
    return out


def table(results: Mapping[str, Samples], metric: str = "pass", k: int = 1, baseline: str = THINK_OFF,
          n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, dict]]:
    """The Table-3-like comparison ``{group: {task: {"estimate", "low", "high", "delta"}}}``: mean pass@k (or
    success@k) over problems with its bootstrap interval; ``delta`` the paired difference from ``baseline`` (``None``
    for the baseline row or when ``baseline`` is not among the groups)."""
    names = groups(results)
    out: dict = {}
    for group in names:
        out[group] = {}
        for task in next(iter(results.values())).correct:
            m = group_matrix(results, group, task, metric)
            if not 1 <= k <= m.shape[1]:
                raise ValueError(f"k must be in 1..{m.shape[1]} (the number of samples), got {k}")
            cell = bootstrap_ci(m[:, k - 1], n_boot=n_boot, level=level, seed=seed)
            cell["delta"] = None
            if group != baseline and baseline in names:
                base = group_matrix(results, baseline, task, metric)[:, k - 1]
                cell["delta"] = paired_difference_ci(m[:, k - 1], base, n_boot=n_boot, level=level, seed=seed)
            out[group][task] = cell
    return out


def tables(results: Mapping[str, Samples], ks: Iterable[int], metric: str = "pass", n_boot: int = 1000,
           seed: int = 0) -> dict[int, dict]:
    """``{k: table(results, metric, k)}`` for each k."""
    return {k: table(results, metric=metric, k=k, n_boot=n_boot, seed=seed) for k in ks}


def paired_effect(results: Mapping[str, Samples], treated: str, baseline: str, task: str, metric: str = "pass",
                  k: int = 1, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean over problems of ``treated − baseline`` (groups) in pass@k or success@k on ``task``, with its paired
    bootstrap interval over problems."""
    a = group_matrix(results, treated, task, metric)
    b = group_matrix(results, baseline, task, metric)
    if not 1 <= k <= min(a.shape[1], b.shape[1]):
        raise ValueError(f"k must be in 1..{min(a.shape[1], b.shape[1])} (the number of samples), got {k}")
    return paired_difference_ci(a[:, k - 1], b[:, k - 1], n_boot=n_boot, level=level, seed=seed)


def intervention_effects(results: Mapping[str, Samples], interventions: Iterable[str], n_random: int,
                         n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """pass@1 ``{task: {label: effect vs think-off, "label vs random": effect vs its random-head placebo}}``
    (the saved ``effects_pass@1``; the placebo column only with ``n_random`` > 0)."""
    tasks_ = list(next(iter(results.values())).correct)
    out: dict = {task: {} for task in tasks_}
    for task in tasks_:
        for label in interventions:
            treated = f"{THINK_OFF} + {label}"
            out[task][label] = paired_effect(results, treated, THINK_OFF, task, n_boot=n_boot, seed=seed)
            if n_random:
                out[task][f"{label} vs random"] = paired_effect(results, treated, f"{treated}, random heads", task,
                                                                n_boot=n_boot, seed=seed)
    return out


def success_over_orders(correct: np.ndarray, n_orders: int | None = None, seed: int = 0) -> np.ndarray:
    """``[problems, n]`` success@k for k = 1…n averaged over orders of each problem's samples: all ``n!`` orders
    when ``n_orders`` is ``None`` (then it equals pass@k exactly; refused above n = 8), else ``n_orders`` random
    permutations, drawn independently per problem (module docstring)."""
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or 0 in correct.shape:
        raise ValueError(f"correct must be a non-empty [problems, samples] array, got shape {correct.shape}")
    n = correct.shape[1]
    if n_orders is None:
        if n > 8:
            raise ValueError(f"all {math.factorial(n)} orders of {n} samples are too many; pass n_orders")
        orders = np.array(list(itertools.permutations(range(n))))  # [n!, n], the same for every problem
        shuffled = correct[:, orders]  # [problems, n!, n]
    else:
        if n_orders < 1:
            raise ValueError(f"n_orders must be >= 1, got {n_orders}")
        rng = np.random.default_rng(seed)
        shuffled = rng.permuted(np.repeat(correct[:, None, :], n_orders, axis=1), axis=2)  # [problems, n_orders, n]
    return np.logical_or.accumulate(shuffled, axis=2).mean(1)


EXACT_ORDERS = 8  # success_over_orders averages over every order up to this many samples, else over random ones
N_ORDERS = 5000


class AtK(NamedTuple):
    """pass@k and success@k curves of every group (:func:`curves`), and for unedited think-off on one task its
    samples (``correct`` ``[problems, n]``), pass@k and success@k per problem and success@k averaged over the orders
    of each problem's samples (``over_orders``; each ``[problems, n]``, k = 1…n)."""

    pass_curves: dict
    success_curves: dict
    correct: np.ndarray
    pass_at_k: np.ndarray
    success_at_k: np.ndarray
    over_orders: np.ndarray

    def orders_to_results(self) -> dict[str, list[float]]:
        """Means over problems for k = 1…n (the saved ``success_over_orders``)."""
        return {THINK_OFF: self.over_orders.mean(0).tolist(), "pass": self.pass_at_k.mean(0).tolist(),
                "success_sampling_order": self.success_at_k.mean(0).tolist()}


def at_k(results: Mapping[str, Samples], task: str, *, n_boot: int = 1000, seed: int = 0) -> AtK:
    """Both curves, and think-off's success@k over every order of its samples on ``task`` (over
    :data:`N_ORDERS` random orders above :data:`EXACT_ORDERS` samples)."""
    pass_curves = curves(results, metric="pass", n_boot=n_boot, seed=seed)
    success_curves = curves(results, metric="success", n_boot=n_boot, seed=seed)
    correct = results[THINK_OFF].correct[task]
    orders = success_over_orders(correct, None if correct.shape[1] <= EXACT_ORDERS else N_ORDERS, seed=seed)
    return AtK(pass_curves, success_curves, correct, per_problem_at_k(correct, "pass"),
               per_problem_at_k(correct, "success"), orders)
