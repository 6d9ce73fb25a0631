"""Head dynamics over training checkpoints: emergent and maintained heads, cohorts, the activation heatmap, the
layer × head map of one checkpoint, and the correlation of the emergent-head count with a reward.

Method ("Thinking Sparks"; ``docs/methods.md``, "GRPO dynamics"). The input is a base head set B (the start model's
circuit) and one head set S_t per checkpoint t > 0 (each checkpoint's circuit, built by any method, e.g. EAP-IG's
``select(...).heads``). Then:

- **emergent** (new) heads at t: S_t − B; **maintained** base heads: S_t ∩ B;
- **newly active** at t: emergent heads not active at the previous checkpoint (S_t − S_{t−1} − B, with S_0 = B);
- **cohorts**: emergent heads grouped by the checkpoint where they first appeared; per cohort, how many members are
  active at each later checkpoint, and how long it survives (the last checkpoint with a member active, and the mean
  fraction of checkpoints from its birth on at which each member is active);
- the **heatmap**: one row per head active anywhere (B or any S_t), one column per checkpoint, each cell active or
  not, base and emergent heads told apart, rows of heads active at the final checkpoint marked, and each row's
  activation frequency (fraction of checkpoints at which it is active);
- the **reward correlation**: Pearson and Spearman (with p-values, :func:`toolkit.core.stats.correlation`) of
  |S_t − B| against a reward per checkpoint.

Head sets are normalised by :func:`toolkit.core.units.as_heads`; two final sets are compared with
:func:`toolkit.core.units.compare_heads`. Checked against a slow per-head count in ``tests/test_dynamics.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from toolkit.core import stats
from toolkit.core.units import Head, as_heads, head_grid


@dataclass
class Dynamics:
    """Head-set dynamics of a run against its start model (see the module docstring). Lists are per checkpoint,
    aligned with ``steps``; ``cohort_counts[c][i]`` is the number of cohort-``c`` heads active at ``steps[i]``."""

    steps: list[int]
    base: frozenset[Head]
    sets: list[frozenset[Head]]
    emergent: list[frozenset[Head]]
    maintained: list[frozenset[Head]]
    newly_active: list[frozenset[Head]]
    first_seen: dict[Head, int]
    cohorts: dict[int, frozenset[Head]]
    cohort_counts: dict[int, list[int]]
    cohort_survival: dict[int, dict] = field(default_factory=dict)
    snapshot_info: dict[int, dict] = field(default_factory=dict)  # per step: seconds, n_pairs, cached (if known)

    @property
    def n_emergent(self) -> list[int]:
        return [len(s) for s in self.emergent]

    @property
    def n_maintained(self) -> list[int]:
        return [len(s) for s in self.maintained]

    @property
    def final_emergent(self) -> frozenset[Head]:
        return self.emergent[-1]

    @property
    def ever_emergent(self) -> frozenset[Head]:
        """Every head that was emergent at some checkpoint."""
        return frozenset(self.first_seen)

    def summary(self) -> dict:
        """JSON-ready numbers: counts per checkpoint, cohorts and their survival, the final emergent set."""
        return {"steps": self.steps, "base_heads": sorted(map(list, self.base)), "n_emergent": self.n_emergent,
                "n_maintained": self.n_maintained, "n_newly_active": [len(s) for s in self.newly_active],
                "final_emergent": sorted(map(list, self.final_emergent)),
                "cohorts": {str(c): {"heads": sorted(map(list, hs)), **self.cohort_survival[c]}
                            for c, hs in self.cohorts.items()}}


def head_dynamics(base: Iterable[Head], snapshots: Mapping[int, Iterable[Head]]) -> Dynamics:
    """:class:`Dynamics` of the head sets ``snapshots`` (checkpoint step → heads, steps > 0) against ``base``."""
    if not snapshots:
        raise ValueError("head_dynamics needs at least one checkpoint")
    steps = sorted(snapshots)
    if steps[0] <= 0:
        raise ValueError(f"checkpoint steps must be positive (step 0 is the base model), got {steps}")
    base = as_heads(base, "base heads")
    sets = [as_heads(snapshots[s], f"heads at step {s}") for s in steps]
    emergent = [s - base for s in sets]
    maintained = [s & base for s in sets]
    newly = [e - prev for e, prev in zip(emergent, [base, *sets[:-1]])]
    first_seen: dict[Head, int] = {}
    for step, heads in zip(steps, emergent):
        for h in heads:
            first_seen.setdefault(h, step)
    cohorts = {c: frozenset(h for h, s in first_seen.items() if s == c) for c in steps
               if any(s == c for s in first_seen.values())}
    counts = {c: [len(members & e) if step >= c else 0 for step, e in zip(steps, emergent)]
              for c, members in cohorts.items()}
    survival = {}
    for c, members in cohorts.items():
        later = [(step, e) for step, e in zip(steps, emergent) if step >= c]
        alive = [step for step, e in later if members & e]
        survival[c] = {"size": len(members), "active_at_final": len(members & emergent[-1]),
                       "last_active": max(alive), "checkpoints_alive": len(alive),
                       "mean_lifetime": float(np.mean([sum(h in e for _, e in later) / len(later) for h in members]))}
    return Dynamics(steps, base, sets, emergent, maintained, newly, first_seen, cohorts, counts, survival)


def head_survival(dyn: Dynamics) -> dict[Head, float]:
    """Per emergent head born before the last checkpoint: the fraction of the checkpoints *after* its birth at which
    it is still emergent (1: it stayed; 0: it left at once). Heads born at the last checkpoint have no later
    checkpoint and are left out."""
    out = {}
    for h, born in sorted(dyn.first_seen.items()):
        later = [e for step, e in zip(dyn.steps, dyn.emergent) if step > born]
        if later:
            out[h] = sum(h in e for e in later) / len(later)
    return out


@dataclass
class Heatmap:
    """Rows: heads (sorted by layer, head) active in the base circuit or at any checkpoint; columns: ``steps``.
    ``active[r, c]`` whether head r is in checkpoint c's circuit; ``is_base[r]`` whether it is a base head;
    ``final[r]`` whether it is active at the last checkpoint; ``frequency[r]`` the fraction of checkpoints at which it
    is active."""

    heads: list[Head]
    steps: list[int]
    active: np.ndarray
    is_base: np.ndarray
    final: np.ndarray
    frequency: np.ndarray

    def codes(self) -> np.ndarray:
        """Cell codes for drawing: 0 inactive, 1 active base head, 2 active emergent head."""
        return np.where(self.active, np.where(self.is_base[:, None], 1, 2), 0)


def heatmap(dyn: Dynamics) -> Heatmap:
    """The layer-head × checkpoint activation :class:`Heatmap` of ``dyn``."""
    heads = sorted(dyn.base.union(*dyn.sets))
    active = np.array([[h in s for s in dyn.sets] for h in heads], dtype=bool).reshape(len(heads), len(dyn.steps))
    return Heatmap(heads, list(dyn.steps), active, np.array([h in dyn.base for h in heads], dtype=bool),
                   active[:, -1].copy(), active.mean(axis=1) if len(heads) else np.zeros(0))


def checkpoint_map(dyn: Dynamics, index: int, n_layers: int, n_heads: int) -> np.ndarray:
    """``[n_layers, n_heads]`` codes at checkpoint ``dyn.steps[index]``: 0 in neither circuit, 1 base head kept,
    2 emergent head, 3 base head absent at this checkpoint."""
    return head_grid({3: dyn.base - dyn.sets[index], 1: dyn.maintained[index], 2: dyn.emergent[index]},
                     n_layers, n_heads)


def reward_correlation(dyn: Dynamics, rewards: Mapping[int, float]) -> dict:
    """Pearson and Spearman correlation (with p-values, :func:`toolkit.core.stats.correlation`) between the
    emergent-head count and ``rewards`` (checkpoint step → reward) over the checkpoints of ``dyn``."""
    missing = [s for s in dyn.steps if s not in rewards]
    if missing:
        raise ValueError(f"no reward for checkpoint steps {missing}")
    return stats.correlation(dyn.n_emergent, [rewards[s] for s in dyn.steps])
