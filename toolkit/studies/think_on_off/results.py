"""Notebook 05's composite steps and its saved numbers.

- :func:`resample`: both modes' circuits under resampling of their pairs (:class:`Resampled`): the stable head sets
  (circuits reselected), one faithfulness curve per pair, the edges each mode needs for 80% recovery and the
  efficiency difference (circuits fixed); :func:`key_step` does the same for the circuits read at the scratchpad's
  key step (:class:`KeyStep`).
- :class:`ThinkOnOffResults`: every step's result in one record; :meth:`ThinkOnOffResults.to_results` is the JSON the
  notebook saves as ``05_think_on_off.results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import NamedTuple

import numpy as np

from toolkit.core.models import LoadedModel
from toolkit.evaluation.causal import Condition
from toolkit.evaluation.claims import Claims
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.methods import eap
from toolkit.organism import tasks
from toolkit.studies.think_on_off import (
    THINK_OFF,
    THINK_ON,
    Efficiency,
    ModeCircuits,
    condition_dict,
    mode_circuits,
    set_counts,
    sets_to_dict,
)
from toolkit.studies.think_on_off.claims import efficiency_bootstrap, per_pair_faithfulness
from toolkit.studies.think_on_off.metrics import AtK
from toolkit.studies.think_on_off.sets import SampledPlacebos, StableComparison, compare, edges_bootstrap, interval

LEVEL = 0.8  # the recovered share whose edge count is compared between the modes
QUANTILES = [0.025, 0.5, 0.975]  # the saved summary of a bootstrap distribution


@dataclass
class Resampled:
    """Both modes' circuits under resampling of their pairs: the ``stable`` head sets (circuits reselected), one
    faithfulness curve per pair ``faith_pairs[mode]`` (:func:`.claims.per_pair_faithfulness`), ``edges[mode]`` =
    (edges for :data:`LEVEL` recovery on all pairs, ``[n_boot]`` draws) and ``efficiency`` = (mean recovered share
    think-on − think-off, ``[n_boot]`` draws); the last three with the circuits fixed."""

    stable: StableComparison
    faith_pairs: dict[str, dict[str, np.ndarray]]
    edges: dict[str, tuple[float, np.ndarray]]
    efficiency: tuple[float, np.ndarray]

    @property
    def largest(self) -> int:
        """The sweep's largest circuit, in edges once pruned."""
        return int(max(max(f["n_edges"]) for f in self.faith_pairs.values()))

    def edges_to_results(self) -> dict[str, dict]:
        """Per mode the edges for :data:`LEVEL` recovery and their 95% interval (``None`` beyond the sweep)."""
        return {m: {"estimate": e, "ci": list(interval(d))} for m, (e, d) in self.edges.items()}


def resample(loaded: LoadedModel, circuits: ModeCircuits, sizes: Sequence[int], *, n_boot_circuit: int = 200,
             n_boot: int = 1000, seed: int = 0) -> Resampled:
    """:class:`Resampled` of ``circuits``: ``n_boot_circuit`` resamples for the stable sets, ``n_boot`` for the
    edges and the efficiency; the faithfulness curves at the circuit ``sizes`` of the sweep."""
    stable = compare(circuits.scores[THINK_ON], circuits.scores[THINK_OFF], circuits.top_n, n_boot=n_boot_circuit,
                     seed=seed)
    faith = {m: per_pair_faithfulness(loaded, circuits.pairs[m], circuits.scores[m], sizes)
             for m in (THINK_ON, THINK_OFF)}
    edges = edges_bootstrap(faith, LEVEL, n_boot=n_boot, seed=seed)
    efficiency = efficiency_bootstrap(faith[THINK_ON], faith[THINK_OFF], n_boot=n_boot, seed=seed)
    return Resampled(stable, faith, edges, efficiency)


class NoKeyStep(ValueError):
    """The think-on pairs cannot be read at the scratchpad's key step (a task whose scratchpad has none)."""


class KeyStep(NamedTuple):
    """The circuits with think-on read at its scratchpad's key step, and them under resampling."""

    circuits: ModeCircuits
    resampled: Resampled

    def to_results(self) -> dict:
        """Pairs per mode, stable sets, edges for :data:`LEVEL` recovery and the share of the think-on circuit's
        heads in the think-off circuit (all pairs)."""
        return {"pairs": {m: len(p) for m, p in self.circuits.pairs.items()},
                "stable_sets": self.resampled.stable.to_results(),
                "edges_for_80pct_bootstrap": self.resampled.edges_to_results(),
                "on_share_in_off": self.resampled.stable.shared_share()[0]}


def key_step(loaded: LoadedModel, examples: Sequence[tasks.Example], circuits: ModeCircuits, sizes: Sequence[int], *,
             positions: str, ig_steps: int, n_boot_circuit: int = 200, n_boot: int = 1000, seed: int = 0) -> KeyStep:
    """The key-step view: ``circuits`` themselves when they were read there (``positions="key_step"``), else both
    modes' circuits again with think-on at its key step (:func:`~toolkit.studies.think_on_off.mode_circuits`), and
    :func:`resample` of them. :class:`NoKeyStep` when the task's scratchpad has no key step."""
    key = circuits
    if positions != "key_step":
        try:
            key = mode_circuits(loaded, examples, top_n=circuits.top_n, steps=ig_steps, metric="kl", seed=seed,
                                per_example=True, positions="key_step")
        except eap.EAPError as e:
            raise NoKeyStep(f"no key-step view: {e} (it needs circuit_task related_math or unrelated_math)") from None
    return KeyStep(key, resample(loaded, key, sizes, n_boot_circuit=n_boot_circuit, n_boot=n_boot, seed=seed))


@dataclass
class ThinkOnOffResults:
    """The study's results in the notebook's order: both modes' ``circuits``, their sweep over circuit sizes
    (``by_size``), them ``resampled``, the ``key``-step view (``None`` without one), the sampled ``conditions``, the
    pass@k ``tables`` (``{k: table}``) and intervention ``effects``, the pass@k and success@k curves (``at_k``), the
    sampled ``placebos`` and teacher-forced ``enumeration`` (empty and ``None`` without off-only heads), the claims;
    and the run's settings that no result holds."""

    circuits: ModeCircuits
    by_size: Efficiency
    resampled: Resampled
    key: KeyStep | None
    conditions: list[Condition]
    tables: dict[int, dict]
    effects: dict
    at_k: AtK
    placebos: dict[str, SampledPlacebos]
    enumeration: HeadSetTest | None
    claims: Claims
    _: KW_ONLY
    model: str
    positions: str
    n_problems: int
    n_samples: int
    n_random: int

    def to_results(self) -> dict:
        """The saved JSON: head sets, circuit sizes and faithfulness per mode, their intervals over resampled pairs,
        the conditions, tables, effects and curves, the placebo tests and each claim's verdict."""
        circuits, stable = self.circuits, self.resampled.stable
        efficiency, draws = self.resampled.efficiency
        ks = sorted({1, self.n_samples})
        return {
            "model": self.model, "top_n": circuits.top_n, "positions": self.positions, "n_problems": self.n_problems,
            "n_samples": self.n_samples, "n_random": self.n_random, "head_sets": sets_to_dict(circuits.sets),
            "head_set_sizes": set_counts(circuits.sets), "sweep": self.by_size.sweep,
            "circuit_edges": {m: c.n_edges for m, c in circuits.circuits.items()},
            "pairs": {m: len(p) for m, p in circuits.pairs.items()},
            "faithfulness": {m: {"n_edges": c["n_edges"], "recovered": c["recovered"]}
                             for m, c in self.by_size.faithfulness.items()},
            "edges_for_80pct": self.by_size.edges_for_level,
            "edges_for_80pct_bootstrap": self.resampled.edges_to_results(),
            "stable_sets": stable.to_results(),
            "key_step": None if self.key is None else self.key.to_results(),
            "conditions": [condition_dict(c) for c in self.conditions],
            "table": {f"pass@{k}": tab for k, tab in self.tables.items()},
            "effects_pass@1": self.effects,
            "pass_at_k": self.at_k.pass_curves, "success_at_k": self.at_k.success_curves,
            "success_over_orders": self.at_k.orders_to_results(),
            "sampled_placebo_sets": {label: p.to_results(ks) for label, p in self.placebos.items()},
            "head_count_off_minus_on": {"estimate": len(stable.off.full_heads) - len(stable.on.full_heads),
                                        "bootstrap": np.quantile(stable.head_count_draws(), QUANTILES).tolist()},
            "efficiency_on_minus_off": {"estimate": efficiency, "bootstrap": np.quantile(draws, QUANTILES).tolist()},
            "placebo_sets": self.enumeration.to_results() if self.enumeration is not None else None,
            "verdicts": self.claims.verdicts(),
        }
