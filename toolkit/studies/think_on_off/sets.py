"""Notebook 05's head sets with intervals: which heads each mode's circuit holds reliably, which are off-only, how many
edges each mode needs, and the off-only set against same-size placebo sets during sampled generation (the study is
:mod:`toolkit.studies.think_on_off`; its claims :mod:`toolkit.studies.think_on_off.claims`).

- **Stable sets** (:func:`compare`): each mode's pairs are resampled with replacement (``n_boot`` times,
  :func:`toolkit.evaluation.stability.bootstrap_circuit`: the top-``top_n`` circuit reselected on every resample,
  without a model call). A head's *inclusion* ``f_mode(h)`` is the share of resampled circuits holding it; the
  *stable* set of a mode is ``{h : f_mode(h) ≥ 0.8}``. The **stable off-only set** is
  ``{h : f_off(h) ≥ 0.8 and f_on(h) < on_max}`` (``on_max`` 0.5): heads in the think-off circuit on at least four of
  five resamples and in the think-on circuit on fewer than half. A head that is stable in think-off and in the
  think-on circuit on, say, 70% of resamples is *not* off-only: it is not reliably absent from thinking.
- **Shared share** (:meth:`StableComparison.shared_share`): ``|on ∩ off| / |on|``, the share of the think-on
  circuit's heads that the think-off circuit holds too, on all pairs and on paired resamples (resample b of each mode).
- **Edges for a recovery level** (:func:`edges_bootstrap`): from one faithfulness curve per pair
  (:func:`toolkit.studies.think_on_off.claims.per_pair_faithfulness`, circuits selected once on all pairs), the
  smallest circuit size whose recovered share ``(m̄ − k̄) / (c̄ − k̄)`` (means over the resampled pairs of the
  metric with the circuit, with the clean and with the corrupted run) reaches ``level``; a resample that never
  reaches it counts as ``inf`` (quantiles are then read as order statistics: "more than the largest size").
- **Sampled placebo sets** (:func:`sampled_placebos`): think-off answers sampled with the off-only heads multiplied by
  each factor and with *every* other same-size head set multiplied by it when there are at most ``n_sets`` such
  sets, else ``n_sets`` distinct random ones (:func:`toolkit.evaluation.nulls.same_size_sets`); per problem, the
  change in pass@k or success@k from unedited think-off, and the off-only set's rank among all sets
  (:func:`toolkit.evaluation.nulls.placebo_test`).
- **Teacher-forced placebo sets** (:func:`teacher_forced_placebos`): the off-only set zero-ablated against every other
  same-size head set, on the reference think-off answers (:func:`toolkit.evaluation.placebo_sets.head_set_test`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core import units
from toolkit.core.answers import per_problem_at_k
from toolkit.core.models import LoadedModel
from toolkit.core.progress import progress
from toolkit.evaluation import nulls, placebo_sets, stability
from toolkit.methods import eap
from toolkit.organism import tasks
from toolkit.studies.think_on_off import THINK_OFF, THINK_ON, condition, sample_condition

ON_MAX = 0.5  # an off-only head is in the think-on circuit on fewer than this share of resamples


def _names(heads) -> list[str]:
    return [f"L{a}H{b}" for a, b in sorted(heads)]


@dataclass
class StableComparison:
    """Both modes' bootstrap circuits (:class:`toolkit.evaluation.stability.CircuitBootstrap`, ``on`` and ``off``)
    and the sets read from them (module docstring)."""

    on: stability.CircuitBootstrap
    off: stability.CircuitBootstrap
    on_max: float = ON_MAX

    @property
    def stable_on(self) -> frozenset:
        return self.on.stable_heads

    @property
    def stable_off(self) -> frozenset:
        return self.off.stable_heads

    @property
    def off_only(self) -> frozenset:
        """Stable in think-off and in the think-on circuit on fewer than ``on_max`` of its resamples."""
        f_on = self.on.head_inclusion
        return frozenset(h for h in self.stable_off if f_on[h] < self.on_max)

    @property
    def stable_shared(self) -> frozenset:
        return self.stable_on & self.stable_off

    def head_count_draws(self) -> np.ndarray:
        """``[B]``: heads of resampled think-off circuit b minus heads of resampled think-on circuit b."""
        return self.off.n_heads.astype(float) - self.on.n_heads.astype(float)

    def shared_share(self) -> tuple[float, np.ndarray]:
        """``(all pairs, [B] paired resamples)``: the share of the think-on circuit's heads also in the think-off
        circuit's (NaN for a resample whose think-on circuit has no head)."""
        n = min(self.on.n_boot, self.off.n_boot)
        both = (self.on.heads[:n] & self.off.heads[:n]).sum((1, 2)).astype(float)
        size = self.on.heads[:n].sum((1, 2)).astype(float)
        draws = np.divide(both, size, out=np.full(n, np.nan), where=size > 0)
        full_on, full_off = self.on.full_heads, self.off.full_heads
        est = len(full_on & full_off) / len(full_on) if full_on else float("nan")
        return est, draws

    def to_results(self) -> dict:
        return {"threshold": self.on.threshold, "on_max": self.on_max, "n_boot": self.on.n_boot,
                "inclusion": {THINK_ON: np.round(self.on.head_inclusion, 3).tolist(),
                              THINK_OFF: np.round(self.off.head_inclusion, 3).tolist()},
                "stable_on": _names(self.stable_on), "stable_off": _names(self.stable_off),
                "stable_shared": _names(self.stable_shared), "off_only": _names(self.off_only)}


def compare(scores_on: eap.Scores, scores_off: eap.Scores, top_n: int, *, n_boot: int = 200, seed: int = 0,
            threshold: float = stability.STABLE_THRESHOLD, on_max: float = ON_MAX) -> StableComparison:
    """:class:`StableComparison` of both modes' circuits (the scores need per-example rows); each mode's pairs are
    resampled independently (seeds ``seed`` and ``seed + 1``)."""
    if not 0 < on_max <= 1:
        raise ValueError(f"on_max must be in (0, 1], got {on_max}")
    on = stability.bootstrap_circuit(scores_on, top_n=top_n, n_boot=n_boot, seed=seed, threshold=threshold)
    off = stability.bootstrap_circuit(scores_off, top_n=top_n, n_boot=n_boot, seed=seed + 1, threshold=threshold)
    return StableComparison(on, off, on_max)


# ---------------------------------------------------------------------------------------------------- edges


def edges_for_level(curve: Mapping[str, np.ndarray], idx: np.ndarray, level: float = 0.8) -> float:
    """The smallest size in ``curve["n_edges"]`` whose recovered share on pairs ``idx`` reaches ``level``; ``inf``
    when none does (``curve``: :func:`~toolkit.studies.think_on_off.claims.per_pair_faithfulness`)."""
    m, c, k = curve["metric"][idx].mean(0), curve["clean"][idx].mean(), curve["corrupted"][idx].mean()
    if abs(c - k) <= 1e-12:
        return float("inf")
    recovered = ((m - k) / (c - k)).tolist()
    n = eap.edges_for_recovery({"n_edges": list(curve["n_edges"]), "recovered": recovered}, level)  # the one rule
    return float("inf") if n is None else float(n)


def edges_bootstrap(curves: Mapping[str, Mapping[str, np.ndarray]], level: float = 0.8, *, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, tuple[float, np.ndarray]]:
    """``{mode: (all pairs, [n_boot] draws)}`` of :func:`edges_for_level`, each mode's pairs resampled independently
    (circuits fixed)."""
    rng = np.random.default_rng(seed)
    out = {}
    for mode, curve in curves.items():
        n = len(curve["clean"])
        out[mode] = (edges_for_level(curve, np.arange(n), level),
                     np.array([edges_for_level(curve, rng.integers(0, n, n), level) for _ in range(n_boot)]))
    return out


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval read as order statistics (``inf`` draws allowed: "beyond the largest size")."""
    a = (1 - level) / 2
    return (float(np.quantile(draws, a, method="inverted_cdf")), float(np.quantile(draws, 1 - a,
                                                                                     method="inverted_cdf")))


# ---------------------------------------------------------------------------------------------------- sampled placebos


@dataclass
class SampledPlacebos:
    """Think-off samples on one task: ``baseline`` (unedited) and ``target`` ``[problems, n]`` correct flags, and
    ``sets`` ``[n_sets, problems, n]`` with each placebo head set multiplied by ``factor``."""

    target_heads: tuple
    factor: float
    task: str
    sets: list[tuple]
    baseline: np.ndarray
    target: np.ndarray
    placebo: np.ndarray
    exhaustive: bool

    def test(self, metric: str = "pass", k: int = 1, *, direction: int = 1, n_boot: int = 1000, seed: int = 0
             ) -> nulls.PlaceboTest:
        """The off-only set's per-problem change in ``metric``@k from unedited think-off against every set's."""
        base = per_problem_at_k(self.baseline, metric)[:, k - 1]
        t = per_problem_at_k(self.target, metric)[:, k - 1] - base
        e = np.stack([per_problem_at_k(s, metric)[:, k - 1] - base for s in self.placebo])
        what = "every other" if self.exhaustive else f"{len(self.sets)} random"
        return nulls.placebo_test(t, e, direction=direction, n_boot=n_boot, seed=seed,
                                  description=f"{what} set of {len(self.target_heads)} heads ×{self.factor:g}, "
                                              f"sampled think-off {metric}@{k}")

    def to_results(self, ks: Sequence[int]) -> dict:
        out = {"heads": _names(self.target_heads), "factor": self.factor, "task": self.task,
               "n_sets": len(self.sets), "exhaustive": self.exhaustive}
        for metric in ("pass", "success"):
            for k in ks:
                r = self.test(metric, k, n_boot=200)
                out[f"{metric}@{k}"] = {"target": r.target_mean, "placebo_mean": r.placebo_mean, "rank": r.rank,
                                        "p": r.p_value, "difference": r.difference, "ci": list(r.ci)}
        return out


def sampled_placebos(loaded: LoadedModel, target, factors: Mapping[str, float], problems: Sequence[tasks.Example],
                     results: Mapping, *, task: str, n_sets: int = 30, seed: int = 0, show_progress: bool = False,
                     **sample_kwargs) -> dict[str, SampledPlacebos]:
    """``{label: SampledPlacebos}``: for each intervention ``label -> factor``, think-off answers to ``problems``
    (task ``task``) sampled with each same-size placebo set edited; the off-only set's and the unedited samples
    are read from ``results`` (``run_conditions``: groups ``think-off`` and ``think-off + label``), which must have
    been sampled with the same ``sample_kwargs`` and seed."""
    cfg = loaded.bridge.cfg
    target = tuple(sorted(units.as_heads(target, "off-only heads", cfg.n_layers, cfg.n_heads)))
    if not target:
        raise ValueError("the off-only set is empty: there is nothing to compare with the placebo sets")
    every = [(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    sets = nulls.same_size_sets(every, len(target), skip=[target], max_sets=n_sets, n_random=n_sets, seed=seed)
    exhaustive = math.comb(len(every), len(target)) - 1 <= n_sets
    out = {}
    for label, factor in factors.items():
        placebo = [sample_condition(loaded, condition(f"placebo {i}", False, s, factor), {task: problems},
                                    seed=seed, **sample_kwargs).correct[task]
                   for i, s in enumerate(progress(sets, desc=f"placebo sets ({label})", disable=not show_progress))]
        out[label] = SampledPlacebos(target, float(factor), task, sets, results[THINK_OFF].correct[task],
                                     results[f"{THINK_OFF} + {label}"].correct[task], np.stack(placebo), exhaustive)
    return out


def teacher_forced_placebos(loaded: LoadedModel, off_only: Sequence[units.Head], problems: Sequence[tasks.Example], *,
                            task: str, max_sets: int = 600, n_random: int = 300,
                            seed: int = 0) -> placebo_sets.HeadSetTest | None:
    """The off-only heads zero-ablated against every other same-size head set (``n_random`` random ones when there
    are more than ``max_sets``), teacher-forced on the think-off answers to ``problems`` (task ``task``); ``None``
    when ``off_only`` is empty."""
    if not off_only:
        return None
    return placebo_sets.head_set_test(loaded, off_only, {task: problems}, factor=0.0, enable_thinking=False,
                                      direction=1, max_sets=max_sets, n_random=n_random, seed=seed)
