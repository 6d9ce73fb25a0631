"""RIM measures, part 3: safety-critical neurons (the counterfactual selection), interventions and paired effects,
and the entanglement of neurons with reasoning (RAS on a common scale). Definitions: :mod:`toolkit.methods.rim`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core import interventions
from toolkit.core.checks import check_int
from toolkit.core.models import LoadedModel
from toolkit.core.stats import correlation, paired_difference_ci


@dataclass
class NeuronSelection:
    """Safety-critical neurons: ``neurons`` ``[(layer, unit), ...]`` (the intersection, by mean difference, largest
    first), ``per_set`` (each disjoint set's top-m) and ``difference`` ``[L, d_mlp]`` (mean refusal − compliance)."""

    neurons: list[tuple[int, int]]
    per_set: list[list[tuple[int, int]]]
    difference: np.ndarray


def select_safety_neurons(refusal: torch.Tensor | np.ndarray, compliance: torch.Tensor | np.ndarray, top_m: int,
                          n_sets: int) -> NeuronSelection:
    """Rank neurons by the activation difference refusal − compliance (``[n_pairs, L, d_mlp]`` each, row i of one
    the counterfactual of row i of the other: the same request under a forced refusal and a forced compliance),
    take the top-m in each of ``n_sets`` disjoint contiguous sets of pairs and intersect."""
    a, b = np.asarray(refusal, dtype=float), np.asarray(compliance, dtype=float)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"need matched [n, L, d_mlp] activations, got {a.shape} and {b.shape}")
    n, n_layers, d_mlp = a.shape
    check_int(n_sets, "n_sets", 1, n)
    check_int(top_m, "top_m", 1, n_layers * d_mlp)
    diff = a - b  # (n, L, d_mlp)
    per_set = []
    for idx in np.array_split(np.arange(n), n_sets):
        mean = diff[idx].mean(0).ravel()  # (L * d_mlp,)
        order = np.argsort(-mean, kind="stable")[:top_m]
        per_set.append([(int(i // d_mlp), int(i % d_mlp)) for i in order])
    common = set(per_set[0]).intersection(*map(set, per_set[1:]))
    overall = diff.mean(0)  # (L, d_mlp)
    neurons = sorted(common, key=lambda lu: (-overall[lu], lu))
    return NeuronSelection(neurons, per_set, overall)


def pick(acts: torch.Tensor | np.ndarray, neurons: Sequence[tuple[int, int]]) -> np.ndarray:
    """The columns of ``[n, L, d_mlp]`` activations for ``neurons``: ``[n, len(neurons)]``."""
    a = np.asarray(acts, dtype=float)
    if not neurons:
        return np.zeros((a.shape[0], 0))
    layers, units = zip(*neurons)
    return a[:, list(layers), list(units)]


# ---- interventions and paired effects ---------------------------------------------------------------------------

def ablated(loaded: LoadedModel, sites: Sequence[interventions.Site], fn: Callable[[], list]) -> list:
    """``fn()`` with ``sites`` zero-ablated (nothing ablated for an empty list)."""
    if not sites:
        return fn()
    with interventions.ablate(loaded.bridge, list(sites)):
        return fn()


def effect(treated: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean change treated − baseline over the same prompts, with a paired bootstrap interval."""
    return paired_difference_ci(np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float))


# ---- entanglement -----------------------------------------------------------------------------------------------

def ras(drop: np.ndarray | float, rise: np.ndarray | float) -> np.ndarray:
    """Harmonic mean of the safety drop and the reasoning rise, elementwise; 0 unless both are positive."""
    d, r = np.asarray(drop, dtype=float), np.asarray(rise, dtype=float)
    both = (d > 0) & (r > 0)
    return np.where(both, 2 * d * r / np.where(both, d + r, 1.0), 0.0)


@dataclass
class Entanglement:
    """One fine-tuned checkpoint and one neuron set: per-neuron ``drop`` (mean safety activation, base − tuned),
    ``rise`` (mean reasoning activation, tuned − base), both in the neuron's standard units when scales were given,
    and ``ras``; the ``mean_*`` properties average over the set (0 for an empty set)."""

    drop: np.ndarray
    rise: np.ndarray
    ras: np.ndarray

    @property
    def mean_drop(self) -> float:
        return float(self.drop.mean()) if self.drop.size else 0.0

    @property
    def mean_rise(self) -> float:
        return float(self.rise.mean()) if self.rise.size else 0.0

    @property
    def mean_ras(self) -> float:
        return float(self.ras.mean()) if self.ras.size else 0.0


def entanglement(base_safety: np.ndarray, tuned_safety: np.ndarray, base_reasoning: np.ndarray,
                 tuned_reasoning: np.ndarray, safety_scale: np.ndarray | None = None,
                 reasoning_scale: np.ndarray | None = None) -> Entanglement:
    """Drop, rise and RAS of each neuron from activations ``[n_prompts, n_neurons]`` (the same prompts for base and
    tuned): safety activations on the safety probes, reasoning activations on the reasoning traces. With scales
    (``[n_neurons]``, the base model's :func:`common_scale` on each probe set) the drop and the rise are divided by
    them, so both are in the neuron's standard units before their harmonic mean is taken."""
    if base_safety.shape != tuned_safety.shape or base_reasoning.shape != tuned_reasoning.shape:
        raise ValueError("base and tuned activations must come from the same prompts and neurons")
    drop = base_safety.mean(0) - tuned_safety.mean(0)
    rise = tuned_reasoning.mean(0) - base_reasoning.mean(0)
    for name, scale, value in (("safety", safety_scale, drop), ("reasoning", reasoning_scale, rise)):
        if scale is not None and np.shape(scale) != value.shape:
            raise ValueError(f"the {name} scale has shape {np.shape(scale)}, the neurons {value.shape}")
    if safety_scale is not None:
        drop = drop / np.asarray(safety_scale, dtype=float)
    if reasoning_scale is not None:
        rise = rise / np.asarray(reasoning_scale, dtype=float)
    return Entanglement(drop, rise, ras(drop, rise))


def forgetting(base_refused: Mapping[str, Sequence[bool]], tuned_refused: Mapping[str, Sequence[bool]]) -> float:
    """Refusal forgetting of a checkpoint: the base model's refusal rate on marked prompts minus the checkpoint's,
    averaged over the answer modes (``{mode: per-prompt refused flags}`` for each)."""
    return float(np.mean([np.mean(base_refused[m]) - np.mean(tuned_refused[m]) for m in base_refused]))


def correlations(table: Sequence[dict], target: str, predictors: Sequence[str]) -> dict[str, dict]:
    """:func:`toolkit.core.stats.correlation` of each predictor column with ``target`` across the rows of ``table``."""
    y = [row[target] for row in table]
    return {p: correlation([row[p] for row in table], y) for p in predictors}
