"""Statistics that compare notebook 04's runs with their start model and with each other, each with its null (the
claims are :mod:`toolkit.studies.grpo_dynamics.claims`):

- :func:`accuracy_gain` — paired change of per-problem greedy correctness, sign-flip null;
- :func:`overlap_test` — Jaccard of two runs' emergent heads, against random head sets of the same sizes;
- :func:`survival_test` — do one run's emergent heads stay longer than another's (heads' run labels permuted);
- :func:`layer_test` — the depth of a run's emergent heads, against every same-size head set;
- :func:`reweighting_test` — mean |E(l, h)| of a checkpoint against the base-vs-itself null.
"""

from __future__ import annotations

import numpy as np

from toolkit.evaluation import emergence, nulls, stability
from toolkit.evaluation.claims import empirical_p
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
    return {"estimate": est, "ci": stability.interval(boots, 0.95), "perm": perm, "p": empirical_p(est, perm),
            "n": len(d)}


def emergent_sets(boot: stability.CircuitBootstrap, base: stability.CircuitBootstrap) -> np.ndarray:
    """``[B, L, H]``: per resample, the heads of the resampled circuit that are not in the base's all-pairs circuit."""
    return boot.heads & ~base.full_heads_grid[None]


def overlap_test(a: stability.CircuitBootstrap, b: stability.CircuitBootstrap, base: stability.CircuitBootstrap, *,
                 n_null: int = N_BOOT, seed: int = 0) -> dict:
    """Jaccard of two runs' emergent heads (all-pairs circuits minus the base's): the estimate, an interval over
    paired resamples (resample r of each), and its null: two random sets of the same sizes drawn from the heads
    outside the base circuit (what unrelated emergent sets of those sizes share by chance). NaN and no null when a
    run added no head."""
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
    return {"estimate": est, "ci": stability.interval(samples, 0.95), "null": null, "sizes": (ka, kb),
            "pool": pool, "p": empirical_p(est, null, direction=-1) if len(null) and np.isfinite(est) else None}


def survival_test(a: Dynamics, b: Dynamics, *, seed: int = 0) -> dict:
    """Mean survival (:func:`toolkit.methods.dynamics.head_survival`) of run ``a``'s emergent heads minus run ``b``'s:
    bootstrap interval (heads resampled within each run) and a permutation null (heads' run labels shuffled)."""
    sa, sb = (np.array(list(head_survival(d).values()), float) for d in (a, b))
    if not len(sa) or not len(sb):
        nan = float("nan")
        return {"estimate": nan, "ci": (nan, nan), "perm": np.array([]), "p": None, "n": (len(sa), len(sb))}
    rng = np.random.default_rng(seed)
    boots = (sa[rng.integers(0, len(sa), (N_BOOT, len(sa)))].mean(1)
             - sb[rng.integers(0, len(sb), (N_BOOT, len(sb)))].mean(1))
    both = np.concatenate([sa, sb])
    perm = np.array([(lambda z: z[:len(sa)].mean() - z[len(sa):].mean())(rng.permutation(both))
                     for _ in range(N_BOOT)])
    est = float(sa.mean() - sb.mean())
    return {"estimate": est, "ci": stability.interval(boots, 0.95), "perm": perm, "p": empirical_p(est, perm),
            "n": (len(sa), len(sb))}


def layer_test(heads, n_layers: int, n_heads: int, base_heads, *, seed: int = 0) -> dict:
    """Mean relative depth (layer / (n_layers − 1)) of ``heads``: bootstrap interval over the heads, and its null:
    every set of as many heads outside ``base_heads`` (or 2000 random ones,
    :func:`toolkit.evaluation.nulls.same_size_sets`)."""
    heads = sorted(heads)
    depth = lambda hs: float(np.mean([h[0] for h in hs])) / max(n_layers - 1, 1)  # noqa: E731
    if not heads:
        nan = float("nan")
        return {"estimate": nan, "ci": (nan, nan), "null": np.array([]), "p": None, "reference": 0.5}
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in set(base_heads)]
    try:
        sets = nulls.same_size_sets(pool, len(heads), skip=[heads], max_sets=2000, n_random=2000, seed=seed)
    except ValueError:  # no other set of that size: no null
        sets = []
    null = np.array([depth(s) for s in sets])
    rng = np.random.default_rng(seed)
    d = np.array([h[0] for h in heads], float) / max(n_layers - 1, 1)
    boots = d[rng.integers(0, len(d), (N_BOOT, len(d)))].mean(1)
    est = depth(heads)
    return {"estimate": est, "ci": stability.interval(boots, 0.95), "null": null,
            "reference": float(null.mean()) if len(null) else 0.5, "p": empirical_p(est, null) if len(null) else None}


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
    return {"estimate": est, "ci": stability.interval(paired, 0.95), "null": null, "p": empirical_p(est, null),
            "all_pairs": float(np.abs(test.change).mean())}
