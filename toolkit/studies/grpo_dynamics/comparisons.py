"""Statistics that compare notebook 04's runs with their start model and with each other, each with its null (the
claims are :mod:`toolkit.studies.grpo_dynamics.claims`):

- :func:`accuracy_gain` — paired change of per-problem greedy correctness, sign-flip null;
- :func:`overlap_test` — Jaccard of two runs' emergent heads, against random head sets of the same sizes;
- :func:`survival_test` — do one run's emergent heads stay longer than another's (heads' run labels permuted);
- :func:`layer_test` — the depth of a run's emergent heads, against every same-size head set;
- :func:`reweighting_test` — mean |E(l, h)| of a checkpoint against the base-vs-itself null;
- :func:`selection_bootstrap` — the heads a run adds, selected again on every resample of the fixed pairs (the
  intervals of the claims on selected head sets: their depth, the pruned count);
- :func:`run_correlation` — a correlation with the run as the unit (one r per run; one run cannot decide);
- one run's statistics: :func:`reward_halves`, :func:`count_reward` (r over its checkpoints, with the
  :func:`effective_n`), :func:`pruning_null`; :func:`scaling_tests` (head scaling against every same-size set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from toolkit.core import models
from toolkit.evaluation import emergence, nulls, stability
from toolkit.evaluation.claims import empirical_p, percentile_ci
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.methods import eap
from toolkit.methods.dynamics import Dynamics, head_survival

N_BOOT = 2000


def accuracy_gain(before: np.ndarray, after: np.ndarray, *, seed: int = 0) -> dict:
    """Paired change of per-problem correctness (after − before): estimate, bootstrap interval over problems, and a
    sign-flip permutation null of the per-problem differences (no change: each difference as likely negated)."""
    d = np.asarray(after, float) - np.asarray(before, float)
    if not len(d):
        raise ValueError("accuracy_gain needs at least one problem; raise n_eval")
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (N_BOOT, len(d)))].mean(1)
    perm = (d[None] * rng.choice((-1.0, 1.0), (N_BOOT, len(d)))).mean(1)
    est = float(d.mean())
    return {"estimate": est, "ci": stability.interval(boots, 0.95), "boots": boots, "perm": perm,
            "p": empirical_p(est, perm), "n": len(d)}


def emergent_sets(boot: stability.CircuitBootstrap, base: stability.CircuitBootstrap) -> np.ndarray:
    """``[B, L, H]``: per resample, the heads of the resampled circuit that are not in the base's all-pairs circuit."""
    return boot.heads & ~base.full_heads_grid[None]


def overlap_test(a: stability.CircuitBootstrap, b: stability.CircuitBootstrap, base: stability.CircuitBootstrap, *,
                 n_null: int = N_BOOT, seed: int = 0) -> dict:
    """Jaccard of two runs' emergent heads (all-pairs circuits minus the base's): the estimate, an interval over
    paired resamples (resample r of each), and its null: two random sets of the same sizes drawn from the heads
    outside the base circuit (what unrelated emergent sets of those sizes share by chance), with the rank p from
    both ends (``p``: fewer shared heads; ``p_opposite``: more) and the resampled Jaccards (``samples``). NaN and
    no null when a run added no head."""
    grid = ~base.full_heads_grid
    set_a, set_b = a.full_heads_grid & grid, b.full_heads_grid & grid
    union = (set_a | set_b).sum()  # no overlap to speak of when a run added no head: NaN
    est = float((set_a & set_b).sum() / union) if set_a.any() and set_b.any() else float("nan")
    ea, eb = emergent_sets(a, base), emergent_sets(b, base)
    samples = stability._jaccard(ea, eb)
    pool, ka, kb = int(grid.sum()), int(set_a.sum()), int(set_b.sum())
    rng = np.random.default_rng(seed)
    null = []
    if ka and kb:
        for _ in range(n_null):
            x, y = rng.choice(pool, ka, replace=False), rng.choice(pool, kb, replace=False)
            null.append(len(set(x) & set(y)) / len(set(x) | set(y)))
    null = np.asarray(null, float)
    ok = len(null) and np.isfinite(est)
    return {"estimate": est, "ci": stability.interval(samples, 0.95), "samples": samples, "null": null,
            "sizes": (ka, kb), "pool": pool, "p": empirical_p(est, null, direction=-1) if ok else None,
            "p_opposite": empirical_p(est, null, direction=1) if ok else None}


def survival_test(a: Dynamics, b: Dynamics, *, seed: int = 0) -> dict:
    """Mean survival (:func:`toolkit.methods.dynamics.head_survival`) of run ``a``'s emergent heads minus run ``b``'s:
    bootstrap interval (heads resampled within each run; its draws ``boots``) and a permutation null (heads' run
    labels shuffled)."""
    sa, sb = (np.array(list(head_survival(d).values()), float) for d in (a, b))
    if not len(sa) or not len(sb):
        nan = float("nan")
        return {"estimate": nan, "ci": (nan, nan), "boots": None, "perm": np.array([]), "p": None,
                "n": (len(sa), len(sb))}
    rng = np.random.default_rng(seed)
    boots = (sa[rng.integers(0, len(sa), (N_BOOT, len(sa)))].mean(1)
             - sb[rng.integers(0, len(sb), (N_BOOT, len(sb)))].mean(1))
    both = np.concatenate([sa, sb])
    perm = np.array([(lambda z: z[:len(sa)].mean() - z[len(sa):].mean())(rng.permutation(both))
                     for _ in range(N_BOOT)])
    est = float(sa.mean() - sb.mean())
    return {"estimate": est, "ci": stability.interval(boots, 0.95), "boots": boots, "perm": perm,
            "p": empirical_p(est, perm), "n": (len(sa), len(sb))}


def layer_test(heads, n_layers: int, n_heads: int, base_heads, *, selection: np.ndarray | None = None,
               direction: int = 1, seed: int = 0) -> dict:
    """Mean relative depth (layer / (n_layers − 1)) of ``heads`` against its null: every set of as many heads outside
    ``base_heads`` (or 2000 random ones, :func:`toolkit.evaluation.nulls.same_size_sets`), with the rank p in the
    paper's ``direction`` and from the other end (``p_opposite``). The interval: with ``selection`` (``[B, L, H]``,
    the head set selected again on each resample, :func:`selection_bootstrap`) the depth of each resample's set, so
    it carries which heads were selected; without, a bootstrap over the given heads (the selection held fixed)."""
    heads = sorted(heads)
    depth = lambda hs: float(np.mean([h[0] for h in hs])) / max(n_layers - 1, 1)  # noqa: E731
    if not heads:
        nan = float("nan")
        return {"estimate": nan, "ci": (nan, nan), "null": np.array([]), "p": None, "p_opposite": None,
                "reference": 0.5}
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in set(base_heads)]
    try:
        sets = nulls.same_size_sets(pool, len(heads), skip=[heads], max_sets=2000, n_random=2000, seed=seed)
    except ValueError:  # no other set of that size: no null
        sets = []
    null = np.array([depth(s) for s in sets])
    est = depth(heads)
    if selection is not None:
        layers = np.arange(n_layers, dtype=float)[None, :, None] / max(n_layers - 1, 1)
        size = selection.sum((1, 2))
        draws = np.divide((selection * layers).sum((1, 2)), size, out=np.full(len(size), np.nan), where=size > 0)
    else:
        d = np.array([h[0] for h in heads], float) / max(n_layers - 1, 1)
        draws = d[np.random.default_rng(seed).integers(0, len(d), (N_BOOT, len(d)))].mean(1)
    p = p_opp = None
    if len(null):
        p = empirical_p(est, null, direction=direction)
        p_opp = empirical_p(est, null, direction=-direction) if direction else None
    return {"estimate": est, "ci": percentile_ci(draws, est), "null": null, "draws": draws,
            "reference": float(null.mean()) if len(null) else 0.5, "p": p, "p_opposite": p_opp}


def reweighting_test(test: emergence.EmergentTest, post: stability.CircuitBootstrap,
                     base: stability.CircuitBootstrap) -> dict:
    """How much a checkpoint moves attribution between heads, without a threshold: the mean over heads of |E(l, h)|
    (the change score of :mod:`toolkit.evaluation.emergence`) between resample b of the checkpoint's pairs and
    resample b of the start model's (its mean over resamples is the estimate, its percentiles the interval), and its
    base-vs-itself null: the same mean between two resamples of the start model's pairs (no training). Both sides are
    resampled in the estimate and in the null alike, so resampling noise inflates them alike."""
    paired = np.abs(emergence._change(post.importance, base.importance)).mean((1, 2))
    null = np.abs(test.null.change).mean((1, 2))
    est = float(paired.mean())
    return {"estimate": est, "ci": stability.interval(paired, 0.95), "draws": paired, "null": null,
            "p": empirical_p(est, null), "all_pairs": float(np.abs(test.change).mean())}


def selection_bootstrap(by_step: Mapping[int, eap.Scores], base: stability.CircuitBootstrap) -> dict[str, np.ndarray]:
    """A run's added heads with the selection redone on every resample of the fixed pairs: for resample b of the
    start model's bootstrap ``base`` (its ``counts``; the fixed pairs are the same token sequences for every
    checkpoint) each checkpoint's circuit (``by_step``: its scores, step 0 the start model's) is selected again and
    compared with the start model's circuit on the same resample. ``{"ever": [B, L, H], "final": [B, L, H]}``: per
    resample, the heads emergent at some checkpoint, and at the last one."""
    steps = sorted(s for s in by_step if s > 0)
    if not steps:
        raise ValueError("selection_bootstrap needs at least one checkpoint after the start")
    new = [stability.resample_circuits(by_step[s], base.counts, base.top_n)[1] & ~base.heads for s in steps]
    return {"ever": np.any(new, axis=0), "final": new[-1]}


def run_correlation(per_run: Sequence[float]) -> dict:
    """Claim fields of a correlation with the run as the unit: one r per run (each over its own checkpoints, so
    autocorrelation inside a run does not matter), their mean with a t-interval and the exact sign-flip p over runs
    (:func:`toolkit.evaluation.nulls.per_run_statistic`, floor ``2^−runs``). With one run the run-level r can be
    anything: the interval is [−1, 1] and the p is the one-run sign flip (0.5 at best, its floor), so the claim is
    inconclusive (``floor``) whatever the run's r. Not measured (NaN) when no run has a finite r."""
    r = np.asarray(per_run, float)
    if not np.isfinite(r).any():
        nan = float("nan")
        return {"estimate": nan, "ci": (nan, nan), "p_value": None, "n": 0, "unit": "runs"}
    fields = nulls.per_run_statistic(r, direction=1).claim_fields()
    if fields["n"] == 1:
        fields["ci"] = (-1.0, 1.0)
    elif not all(math.isfinite(v) for v in fields["ci"]):  # every run gave the same r: no spread to build on
        fields["ci"] = (fields["estimate"], fields["estimate"])
    return fields


# ---- one run's statistics: its reward, its count–reward correlation, its pruned heads --------------------------

def pruning_null(base: stability.CircuitBootstrap, length: int) -> np.ndarray:
    """Per sequence of ``length`` resampled start-model circuits: heads ever outside the all-pairs circuit minus
    those outside it in the sequence's last circuit ("tried and pruned" by noise alone)."""
    new = base.heads & ~base.full_heads_grid  # [B, L, H]
    seqs = new[:len(new) // length * length].reshape(-1, length, *new.shape[1:])
    return seqs.any(1).sum((1, 2)) - seqs[:, -1].sum((1, 2))


def _lag1(x: np.ndarray) -> float:
    x = np.asarray(x, float) - np.mean(x)
    return float((x[1:] * x[:-1]).sum() / (x * x).sum()) if (x * x).sum() > 0 else 0.0


def effective_n(x: Sequence[float], y: Sequence[float]) -> float:
    """``n·(1 − ρx·ρy)/(1 + ρx·ρy)`` with lag-1 autocorrelations ρ (checkpoints of one run are not
    independent)."""
    r = _lag1(x) * _lag1(y)
    return float(len(x) * (1 - r) / (1 + r))


def _r(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")


def count_reward(counts: Sequence[int], rewards: Sequence[float], *, seed: int = 0) -> dict:
    """Pearson r of counts and rewards, bootstrap interval over checkpoints, permutation p, permutation draws and
    the effective n."""
    x, y = np.asarray(counts, float), np.asarray(rewards, float)
    rng = np.random.default_rng(seed)
    boots = np.array([_r(x[i], y[i]) for i in rng.integers(0, len(x), size=(N_BOOT, len(x)))])
    perm = np.array([_r(rng.permutation(x), y) for _ in range(N_BOOT)])
    r = _r(x, y)
    return {"r": r, "ci": stability.interval(boots, 0.95), "perm": perm, "n": len(x), "n_eff": effective_n(x, y),
            "p": empirical_p(r, perm) if np.isfinite(r) else float("nan")}


def reward_halves(steps: Sequence[int], rewards: Sequence[float], *, seed: int = 0) -> dict:
    """Mean reward of the second half of the steps minus the first: bootstrap interval (steps resampled within
    each half; its draws ``boots``), permutation p (step order shuffled) and the permutation draws."""
    y = np.asarray(rewards, float)[np.argsort(steps)]
    h = len(y) // 2
    a, b = y[:h], y[h:]
    rng = np.random.default_rng(seed)
    boots = b[rng.integers(0, len(b), (N_BOOT, len(b)))].mean(1) - a[rng.integers(0, len(a), (N_BOOT, len(a)))].mean(1)
    perm = np.array([(lambda z: z[h:].mean() - z[:h].mean())(rng.permutation(y)) for _ in range(N_BOOT)])
    d = float(b.mean() - a.mean())
    return {"estimate": d, "ci": stability.interval(boots, 0.95), "boots": boots, "perm": perm,
            "p": empirical_p(d, perm)}


def scaling_tests(start: models.LoadedModel, heads: Sequence, examples: Mapping[str, Sequence], *,
                  factors: Sequence[float], n_per_task: int = 16, enable_thinking: bool = False,
                  max_sets: int = 500, seed: int = 0) -> dict[str, HeadSetTest]:
    """Per factor: :func:`toolkit.evaluation.placebo_sets.head_set_test` of ``heads`` scaled in the start model, on the
    first ``n_per_task`` problems of each task, effects ``|change|`` (direction +1: the heads move the reference
    answer's log-probability more than other sets of their size): every other set of as many heads, or 200 random
    ones when there are more than ``max_sets``."""
    from toolkit.evaluation.placebo_sets import head_set_test

    ex = {t: list(e)[:n_per_task] for t, e in examples.items()}
    return {f"{f:g}": head_set_test(start, heads, ex, factor=f, enable_thinking=enable_thinking, direction=+1,
                                    absolute=True, max_sets=max_sets, seed=seed) for f in factors}
