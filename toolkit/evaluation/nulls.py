"""Nulls: what an effect is compared with — every same-size set of units (placebo sets) and correlations over
clustered points. See ``docs/methods.md`` ("Claims and nulls").

**Placebo sets.** An intervention on a target set of units (heads, neurons) is compared with the same intervention
on every other set of the same size (:func:`same_size_sets`: all ``itertools.combinations`` when there are at most
``max_sets``, else ``n_random`` distinct random sets drawn with one seeded generator). :func:`placebo_test` takes
the per-problem effect of the target set ``t[i]`` and of each placebo set ``e[s, i]`` (the same problems ``i`` for
every set) and reports

- the target's mean ``T = mean_i t[i]`` and each set's mean ``M_s = mean_i e[s, i]``;
- the target's **rank** among the ``n_sets + 1`` sets (1 = the most extreme in the paper's direction:
  ``1 + #{s: d·M_s > d·T}`` for direction ``d = ±1``; direction 0 measures distance from the placebos' mean);
- the **permutation p-value** ``(1 + #{s: d·M_s ≥ d·T}) / (1 + n_sets)`` (ties count against the target), the
  exact p of "the target is an exchangeable draw among the sets", and the same from the other end,
  ``p_opposite = (1 + #{s: d·M_s ≤ d·T}) / (1 + n_sets)``: the verdict decides both ways from these ranks;
- ``T − mean_s M_s`` with a **two-level bootstrap** interval: each replicate resamples the problems (shared by the
  target and the sets, so the pairing is kept) *and* the sets, so the interval includes the draw-to-draw variance
  of the placebos, not only the problem noise.

:meth:`PlaceboTest.null` turns it into a claims ``Null`` of kind ``"placebo-sets"`` (the placebo means are the
null's samples).

**Weight noise** (KL-matched untargeted change) lives in :mod:`toolkit.evaluation.weight_noise`.

**Clustered points.** A correlation across checkpoints of a few training runs has the runs, not the checkpoints, as
its effective n: :func:`clustered` and :func:`cluster_correlation` resample whole clusters (runs) with replacement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# ---- placebo sets -----------------------------------------------------------------------------------------------


def same_size_sets(units: Iterable[Hashable], size: int, *, exclude: Iterable[Hashable] = (),
                   skip: Iterable[Iterable[Hashable]] = (), max_sets: int = 5000, n_random: int = 200,
                   seed: int = 0) -> list[tuple]:
    """Sets of ``size`` units from ``units`` (less ``exclude``), as tuples in ``units`` order.

    Every combination when there are at most ``max_sets`` of them (in ``itertools.combinations`` order), else
    ``n_random`` distinct random sets (deterministic in ``seed``). Sets in ``skip`` (e.g. the target set) are left
    out of both.
    """
    pool = list(dict.fromkeys(units))
    excluded = set(exclude)
    pool = [u for u in pool if u not in excluded]
    skipped = {frozenset(s) for s in skip}
    if not pool:
        raise ValueError("same_size_sets needs at least one unit (after exclude); pass the units to draw from")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"set size must be a positive integer, got {size!r}")
    if size > len(pool):
        raise ValueError(f"cannot draw sets of {size} from {len(pool)} units; use a size of at most {len(pool)}")
    if max_sets < 1 or n_random < 1:
        raise ValueError(f"max_sets and n_random must be >= 1, got {max_sets} and {n_random}")
    n_skip = sum(1 for s in skipped if len(s) == size and s <= set(pool))
    total = math.comb(len(pool), size) - n_skip
    if total < 1:
        raise ValueError(f"no set of {size} units is left once the skipped sets are removed")
    if total <= max_sets:
        return [c for c in itertools.combinations(pool, size) if frozenset(c) not in skipped]
    rng = np.random.default_rng(seed)
    want = min(n_random, total)
    seen: set[frozenset] = set()
    out = []
    while len(out) < want:
        idx = np.sort(rng.choice(len(pool), size=size, replace=False))
        key = frozenset(pool[i] for i in idx)
        if key in seen or key in skipped:
            continue
        seen.add(key)
        out.append(tuple(pool[i] for i in idx))
    return out


@dataclass(frozen=True)
class PlaceboTest:
    """The target set's effect against its same-size placebo sets (see the module docstring)."""

    target_mean: float
    placebo_means: np.ndarray
    rank: int
    p_value: float
    difference: float
    ci: tuple[float, float]
    direction: int
    n_problems: int
    description: str = ""

    n_sets = property(lambda self: int(len(self.placebo_means)))

    @property
    def p_opposite(self) -> float | None:
        """The rank p-value from the other end (the target among the *least* extreme sets); None for direction 0."""
        if self.direction == 0:
            return None
        d, t = self.direction, self.direction * self.target_mean
        eps = 1e-12 * max(1.0, abs(t))
        return float((1 + int(np.sum(d * self.placebo_means <= t + eps))) / (1 + self.n_sets))

    def claim_fields(self) -> dict:
        """What a claim on this test passes to ``Claims.add``: estimate, interval, p-values (both ends), null and
        the number of problems."""
        return {"estimate": self.difference, "ci": self.ci, "p_value": self.p_value, "p_opposite": self.p_opposite,
                "null": self.null(), "n": self.n_problems, "unit": "problems"}
    placebo_mean = property(lambda self: float(np.mean(self.placebo_means)))

    def null(self, description: str | None = None):
        """A claims ``Null`` of kind ``"placebo-sets"`` with the placebo means as its samples."""
        from toolkit.evaluation.claims import Null

        what = description or self.description or (
            f"the same intervention on {self.n_sets} other same-size unit sets (mean effect per set)")
        return Null.from_samples("placebo-sets", self.placebo_means, what)

    def summary(self) -> str:
        return (f"target {self.target_mean:.3g} vs placebos {self.placebo_mean:.3g} (rank {self.rank}/"
                f"{self.n_sets + 1}, p = {self.p_value:.3g}); difference {self.difference:.3g} "
                f"[{self.ci[0]:.3g}, {self.ci[1]:.3g}]")


def placebo_test(target: Sequence[float] | np.ndarray, placebos: Sequence[Sequence[float]] | np.ndarray, *,
                 direction: int = +1, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 description: str = "") -> PlaceboTest:
    """Rank, permutation p and a two-level bootstrap interval of the target set's mean effect against the placebo
    sets' (``target``: ``[n_problems]``; ``placebos``: ``[n_sets, n_problems]``, the same problems)."""
    t = np.asarray(target, dtype=float)
    e = np.asarray(placebos, dtype=float)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"target must be one effect per problem (a non-empty 1-D array), got shape {t.shape}")
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"placebos must be [n_sets, n_problems] with at least one set, got shape {e.shape}")
    if e.shape[1] != len(t):
        raise ValueError(f"placebos score {e.shape[1]} problems but the target {len(t)}; score the same problems")
    if direction not in (-1, 0, 1):
        raise ValueError(f"direction must be +1, -1 or 0, got {direction!r}")
    if not (np.isfinite(t).all() and np.isfinite(e).all()) or n_boot < 1:
        raise ValueError(f"target and placebo effects must be finite (drop or fix the NaN/inf problems first) and "
                         f"n_boot >= 1 (got {n_boot})")
    T, M = float(t.mean()), e.mean(axis=1)
    if direction == 0:
        centre = float(M.mean())
        score_t, score_m = abs(T - centre), np.abs(M - centre)
    else:
        score_t, score_m = direction * T, direction * M
    eps = 1e-12 * max(1.0, abs(score_t))
    rank = 1 + int(np.sum(score_m > score_t + eps))
    p = (1 + int(np.sum(score_m >= score_t - eps))) / (1 + len(M))
    lo, hi = _two_level_ci(t, e, n_boot=n_boot, level=level, seed=seed)
    diff = T - float(M.mean())
    return PlaceboTest(T, M, rank, float(p), diff, (min(lo, diff), max(hi, diff)), int(direction), len(t),
                       description)


def _two_level_ci(t: np.ndarray, e: np.ndarray, *, n_boot: int, level: float, seed: int,
                  chunk: int = 256) -> tuple[float, float]:
    """Percentile interval of ``mean(t[I]) − mean_{s∈S} mean(e[s, I])`` over replicates that resample problems
    ``I`` and sets ``S`` independently (both with replacement)."""
    rng = np.random.default_rng(seed)
    n_sets, n_prob = e.shape
    boots = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        wp = _counts(rng, n_prob, b) / n_prob          # [b, n_prob] problem weights
        ws = _counts(rng, n_sets, b) / n_sets          # [b, n_sets] set weights
        set_means = wp @ e.T                           # [b, n_sets]: each set's mean over the resampled problems
        boots[start:start + b] = wp @ t - np.sum(ws * set_means, axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def _counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    return np.apply_along_axis(np.bincount, 1, rng.integers(0, n, size=(b, n)), minlength=n).astype(float)


# ---- correlations over clustered points (checkpoints of a few runs) ---------------------------------------------


def cluster_bootstrap(statistic, clusters: Sequence[Hashable], *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """``[n_boot]``: ``statistic(indices)`` on resamples that draw whole clusters with replacement (every point of
    a drawn cluster, as often as it is drawn). ``clusters`` names each point's cluster (e.g. its training run);
    NaN where ``statistic`` gives NaN (e.g. a resample of one cluster)."""
    labels = list(clusters)
    groups = [np.flatnonzero([c == g for c in labels]) for g in dict.fromkeys(labels)]
    if len(groups) < 2:
        raise ValueError(f"a cluster bootstrap needs at least 2 clusters, got {len(groups)}")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        out[b] = statistic(np.concatenate([groups[i] for i in pick]))
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r, NaN for fewer than 3 points or a constant series."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
    return float(np.corrcoef(x, y)[0, 1]) if ok else float("nan")


@dataclass(frozen=True)
class ClusteredCorrelation:
    """A statistic over clustered points (e.g. r across the checkpoints of a few runs): estimate, cluster-bootstrap
    interval and draws, p (:func:`clustered`), the number of points and the effective n (clusters)."""

    estimate: float
    ci: tuple[float, float]
    p_value: float
    samples: np.ndarray
    n_points: int
    n_eff: int

    def summary(self) -> str:
        return (f"{self.estimate:+.2f} [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}] (n = {self.n_points} points, "
                f"effective n = {self.n_eff} clusters, bootstrap p = {self.p_value:.3g})")


def clustered(statistic, clusters: Sequence[Hashable], *, direction: int = 1, reference: float = 0.0,
              n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> ClusteredCorrelation:
    """``statistic(all indices)`` with a cluster-bootstrap interval (:func:`cluster_bootstrap`; NaN draws dropped) and
    p = ``(1 + #{d·(draw − reference) ≤ 0}) / (1 + #draws)`` (``direction`` 0: twice the smaller side), but never
    below ``2^−k`` for k clusters: no test on k independent units (e.g. an exact sign flip over runs) can be surer,
    and a bootstrap over 3 runs would otherwise claim p = 0.0005."""
    labels = list(clusters)
    est = float(statistic(np.arange(len(labels))))
    one = len(set(labels)) < 2  # one cluster: no interval (reported as NaN, so any verdict is inconclusive)
    draws = np.array([]) if one else cluster_bootstrap(statistic, labels, n_boot=n_boot, seed=seed)
    ok = draws[np.isfinite(draws)]
    if len(ok) == 0 or not math.isfinite(est):
        nan = float("nan")
        return ClusteredCorrelation(est, (nan, nan), 1.0, ok, len(labels), len(set(labels)))
    alpha = (1 - level) / 2
    lo, hi = float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha))

    def side(d):
        return (1 + int(np.sum(d * (ok - reference) <= 0))) / (1 + len(ok))

    p = min(1.0, 2 * min(side(1), side(-1))) if direction == 0 else side(direction)
    k = len(set(labels))
    return ClusteredCorrelation(est, (lo, hi), float(max(p, 0.5 ** k)), ok, len(labels), k)


def cluster_correlation(x: Sequence[float], y: Sequence[float], clusters: Sequence[Hashable], *, direction: int = 1,
                        n_boot: int = 2000, seed: int = 0) -> ClusteredCorrelation:
    """Pearson r of ``x`` and ``y`` with a cluster-bootstrap interval and effective n = the number of clusters."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) != len(list(clusters)):
        raise ValueError(f"need x, y and clusters of one length, got {x.shape}, {y.shape}, {len(list(clusters))}")
    return clustered(lambda i: pearson(x[i], y[i]), clusters, direction=direction, n_boot=n_boot, seed=seed)


# ---- paired differences ----------------------------------------------------------------------------------------


def paired_permutation(treated: Sequence[float], baseline: Sequence[float], *, direction: int = 1,
                       n_perm: int = 5000, seed: int = 0) -> tuple[float, np.ndarray]:
    """Sign-flip permutation test of the mean paired difference treated − baseline: ``(p, null draws)``, each draw
    the mean difference with every problem's pair randomly swapped; ``p = (1 + #{d·draw ≥ d·observed}) /
    (1 + n_perm)`` (``direction`` 0: two-sided on |·|)."""
    d = np.asarray(treated, dtype=float) - np.asarray(baseline, dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"need one paired value per problem, got shape {d.shape}")
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, len(d)))
    draws = (signs * d).mean(1)
    obs = d.mean()
    if direction == 0:
        extreme = np.abs(draws) >= abs(obs) - 1e-12
    else:
        extreme = direction * draws >= direction * obs - 1e-12
    return float((1 + extreme.sum()) / (1 + n_perm)), draws


def paired_difference(a: Sequence[float], b: Sequence[float], *, direction: int = 1, n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """What a claim on the mean paired difference ``a − b`` over the same prompts passes to ``Claims.add`` (besides
    its SESOI): the estimate, a bootstrap interval over prompts (:func:`toolkit.core.stats.paired_rates_ci`: for 0/1
    outcomes Newcombe's interval where every prompt changed alike), the sign-flip p (:func:`paired_permutation`;
    exact under the null that each prompt's two outcomes are exchangeable, where a bootstrap p is liberal at small
    n), its null, and ``n`` prompts."""
    from toolkit.core.stats import paired_rates_ci
    from toolkit.evaluation.claims import Null

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    p, draws = paired_permutation(x, y, direction=direction, n_perm=n_boot, seed=seed + 1)
    return {"estimate": float(d.mean()), "ci": paired_rates_ci(x, y, boots), "p_value": p, "n": len(d),
            "unit": "prompts", "null": Null.from_samples("permutation", draws, "the mean paired difference with "
                                                         "each prompt's two outcomes swapped at random")}

# ---- runs as the unit of replication ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLevel:
    """A comparison whose unit is the training run: the estimate, its 95% interval, the exact permutation or
    sign-flip p-value over runs (one-sided in the paper's direction), the same p from the other end, the smallest p
    the design can give (``p_floor``), and the number of runs ``n``."""

    estimate: float
    ci: tuple[float, float]
    p_value: float
    p_opposite: float
    p_floor: float
    n: int

    def claim_fields(self) -> dict:
        """What a claim on this comparison passes to ``Claims.add`` (besides its null)."""
        return {"estimate": self.estimate, "ci": self.ci, "p_value": self.p_value, "p_floor": self.p_floor,
                "n": self.n, "unit": "runs"}


def _t_interval(x: np.ndarray, centre: float, se: float, dof: int) -> tuple[float, float]:
    from scipy import stats

    if dof < 1 or not math.isfinite(se):
        return math.nan, math.nan
    half = float(stats.t.ppf(0.975, dof) * se)
    return centre - half, centre + half


def runs_difference(a: Sequence[float], b: Sequence[float], *, direction: int = 1) -> RunLevel:
    """Mean of the runs ``a`` − mean of the runs ``b`` (one number per run), with a Welch t-interval and the exact
    permutation p over every split of the runs into groups of those sizes (``(1 + #{d·perm ≥ d·observed, other
    splits}) / #splits``; with 3 runs against 3 the floor is 1/20 = 0.05, which cannot reach α = 0.05)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or len(x) < 1 or len(y) < 1 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"runs_difference needs one finite number per run in each group, got {x} and {y}")
    est = float(x.mean() - y.mean())
    if len(x) > 1 and len(y) > 1:
        vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        se = math.sqrt(vx + vy)
        dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1)) if vx + vy > 0 else 1
        ci = _t_interval(x, est, se, int(max(1, math.floor(dof)))) if se > 0 else (est, est)
    else:
        ci = (math.nan, math.nan)
    pooled = np.concatenate([x, y])
    splits = list(itertools.combinations(range(len(pooled)), len(x)))
    stats_ = np.array([pooled[list(s)].mean() - np.delete(pooled, list(s)).mean() for s in splits])
    eps = 1e-12 * max(1.0, abs(est))
    d = direction if direction else 1
    p = float(np.mean(d * stats_ >= d * est - eps))
    p_opp = float(np.mean(d * stats_ <= d * est + eps))
    return RunLevel(est, ci, p, p_opp, 1 / len(splits), len(pooled))


def per_run_statistic(values: Sequence[float], *, direction: int = 1) -> RunLevel:
    """One statistic per run (e.g. each run's correlation over its own checkpoints: autocorrelation inside a run
    does not matter, because the run is the unit). The mean over runs with a t-interval, and the exact sign-flip p
    over runs (``2^−k`` floor for k runs)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 1:
        raise ValueError("per_run_statistic needs at least one finite per-run value")
    est = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    ci = _t_interval(x, est, se, len(x) - 1) if len(x) > 1 and se > 0 else (math.nan, math.nan)
    signs = np.array(list(itertools.product((1, -1), repeat=len(x))))
    flipped = (signs * x).mean(1)
    eps = 1e-12 * max(1.0, abs(est))
    d = direction if direction else 1
    return RunLevel(est, ci, float(np.mean(d * flipped >= d * est - eps)),
                    float(np.mean(d * flipped <= d * est + eps)), 0.5 ** len(x), len(x))
