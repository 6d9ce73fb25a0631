"""The paths of the verdict rule that :mod:`toolkit.evaluation.calibration` simulates: one :class:`Spec` per path and
design (``PATHS``, name → spec), each with a simulator ``simulate(rng, effect, spec) -> (verdict, reason)`` that
draws one replicate's data with the given true effect and registers its claim with
:meth:`toolkit.evaluation.claims.Claims.add`, the way the studies do.

What "the true effect" means per path (the claim's estimand, in its own units; the SESOI is the effect at the
alternative):

- ``paired-difference``, ``no-effect``, ``seeds-pooled``: the mean per-prompt paired difference (0/1 accuracies:
  each prompt is discordant with a fixed probability, +1 or −1 in proportions that give the mean; or normal noise;
  seeds on shared prompts: each prompt has its own effect, the mean ± a spread).
- ``count``: the expected count of emergent units above the base-vs-itself null's: units are emergent when their
  mean gain over the pairs exceeds a margin that a null unit passes with probability π₀; at the SESOI ``2·s``
  units pass it with probability π₀ + ½ more.
- ``rank-among-sets``: the target set's per-problem effect is shifted by the SESOI; under the null it is a set drawn
  uniformly from the units, exchangeable with every other same-size set (skewed per-unit effects).
- ``weight-noise``: the trained model's statistic is one draw of the noised models' distribution (model-to-model
  spread ``tau`` plus the measurement noise of its problems), shifted by the effect.
- ``base-vs-itself``: the expected statistic (mean over units of |post − base|) above the null's expectation.
- ``correlation-over-checkpoints``: the expected Pearson r over a run's checkpoints of two random walks whose steps
  have the correlation that gives it (:func:`step_correlation`; 0 under the null: unrelated walks).
- ``runs-difference``: the difference of the mean per-run values of the two groups of runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from toolkit.evaluation import nulls, verdicts
from toolkit.evaluation.claims import Claim, Claims, Null, count_ci, empirical_p, percentile_ci

N_BOOT = 400  # bootstrap draws of one simulated claim (the studies use 1000-2000; 400 keeps the percentiles honest)
N_BOOT_SETS = 200  # placebo_test's two-level bootstrap


@dataclass(frozen=True)
class Spec:
    """One path of the rule at one design: its claim's null kind and direction, ``n`` units of ``unit``, the SESOI,
    a short ``design``, the ``noise`` it simulates, the simulator and its ``params``; ``legacy`` marks a rule we no
    longer use (expected to fail, outside the bound)."""

    name: str
    family: str
    null: str
    direction: int
    n: int
    unit: str
    sesoi: float
    design: str
    noise: str
    simulate: Callable = field(repr=False, compare=False)
    params: Mapping = field(default_factory=dict, compare=False)
    legacy: bool = False

    def describe(self) -> dict:
        """The JSON-able part of the spec."""
        return {"name": self.name, "family": self.family, "null": self.null, "direction": self.direction,
                "n": self.n, "unit": self.unit, "sesoi": self.sesoi, "design": self.design, "noise": self.noise,
                "params": dict(self.params), "legacy": self.legacy}


def _register(spec: Spec, **fields) -> Claim:
    """The claim, registered as a study registers a finding (its verdict is computed there)."""
    return Claims("calibration").add(
        spec.family, paper="calibration", statement=f"a simulated {spec.family} claim", measure=spec.noise,
        direction=spec.direction, sesoi=spec.sesoi, sesoi_reason="the path's declared smallest effect of interest",
        controls=("random",), **fields)


def _claim(spec: Spec, **fields) -> tuple[str, str]:
    c = _register(spec, **fields)
    return c.verdict, c.reason


def _boot_means(rng: np.random.Generator, x: np.ndarray, n_boot: int = N_BOOT) -> np.ndarray:
    return x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)


def _weights(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """``[b, n]`` bootstrap weights (resample counts / n)."""
    return rng.multinomial(n, np.full(n, 1 / n), size=b) / n


# ---- per-prompt paired differences ------------------------------------------------------------------------------

def _diffs(rng: np.random.Generator, effect: float, p: Mapping) -> np.ndarray:
    if p["kind"] == "binary":  # +1 with probability (q + effect)/2, −1 with (q − effect)/2: mean = effect
        u, q = rng.random(p["prompts"]), p["discordant"]
        return np.where(u < (q + effect) / 2, 1.0, np.where(u < q, -1.0, 0.0))
    return effect + p["sd"] * rng.standard_normal(p["prompts"])


def _paired_fields(rng: np.random.Generator, d: np.ndarray, direction: int) -> dict:
    """The studies' paired-difference claim (:func:`nulls.paired_difference`) on differences ``d`` (as ``d − 0``)."""
    return nulls.paired_difference(d, np.zeros_like(d), direction=direction, n_boot=N_BOOT,
                                   seed=int(rng.integers(2 ** 31)))


def paired(rng, effect, spec):
    """A paired difference over prompts with a bootstrap interval and p (directional or no-effect)."""
    return _claim(spec, **_paired_fields(rng, _diffs(rng, effect, spec.params), spec.direction))


def seeds_pooled(rng, effect, spec):
    """The same paired-difference claim on several seeds, pooled by :func:`verdicts.pool` into one claim as the
    scorecard pools them: independent seeds (fixed-effect mean, Fisher's p), or seeds on the same prompts, whose
    prompts have their own effects (``independent=False``: no narrowing, twice the mean p)."""
    p = spec.params
    # shared prompts: each prompt has its own effect (effect ± spread, mean effect), the same for every seed
    theta = effect + p["spread"] * rng.choice([-1.0, 1.0], p["prompts"]) if p["shared"] else effect
    per_seed = [_register(spec, **_paired_fields(rng, _diffs(rng, theta, p), spec.direction))
                for _ in range(p["seeds"])]
    est, ci, pv = verdicts.pool([c.estimate for c in per_seed], [c.ci for c in per_seed],
                                [c.p_value for c in per_seed], independent=not p["shared"])
    decided = {c.verdict for c in per_seed}
    return _claim(spec, estimate=est, ci=ci, p_value=pv, null=per_seed[0].null, unit="prompts",
                  n=p["prompts"] * (1 if p["shared"] else p["seeds"]), independent_seeds=not p["shared"],
                  seeds_disagree={"reproduces", "contradicts"} <= decided)


# ---- counts of emergent units against a base-vs-itself null -----------------------------------------------------

def count(rng, effect, spec):
    """Units whose mean gain over the pairs passes a margin; interval from bootstrap resamples of the pairs, p
    against base-vs-itself null counts (Binomial(m, π₀): exactly the count of m null units), reference their mean."""
    p = spec.params
    m, n, pi0 = p["units"], p["pairs"], p["pi0"]
    se = 1 / math.sqrt(n)
    margin = se * stats.norm.isf(pi0)
    gain = np.zeros(m)
    if effect:
        k = max(1, int(round(2 * effect)))  # 2·effect units pass with probability π₀ + ½: the count rises by effect
        gain[:k] = margin + se * stats.norm.ppf(pi0 + effect / k)
    x = gain + rng.standard_normal((n, m))
    est = float((x.mean(0) > margin).sum())
    boots = ((_weights(rng, n, N_BOOT) @ x) > margin).sum(1)
    null = rng.binomial(m, pi0, size=p["null_draws"]).astype(float)
    return _claim(spec, estimate=est, ci=count_ci(boots, est), p_value=empirical_p(est, null),
                  reference=float(null.mean()), n=n, unit="pairs",
                  null=Null.from_samples("base-vs-itself", null, "emergent units between two base resamples"))


# ---- the target set among every same-size set ---------------------------------------------------------------------

def placebo(rng, effect, spec):
    """Per-unit effects (skewed) plus per-problem noise, summed over sets; the target set is a uniformly drawn set
    (exchangeable with the placebos under the null) shifted by the effect. ``legacy``: the same test decided from
    the interval around the placebos' mean (the claim made with a non-rank null and no ``p_opposite``)."""
    p = spec.params
    m, k, n = p["units"], p["size"], p["problems"]
    target = tuple(int(i) for i in np.sort(rng.choice(m, k, replace=False)))
    sets = np.array(nulls.same_size_sets(range(m), k, skip=[target]))
    a = rng.lognormal(0.0, 1.0, m) if p["effects"] == "lognormal" else rng.exponential(1.0, m)
    u = a[:, None] + p["problem_sd"] * rng.standard_normal((m, n))
    test = nulls.placebo_test(u[list(target)].sum(0) + effect, u[sets].sum(1), direction=1, n_boot=N_BOOT_SETS,
                              seed=int(rng.integers(2 ** 31)))
    fields = test.claim_fields()
    if spec.legacy:
        fields.pop("p_opposite")
        fields["null"] = Null.from_samples("permutation", test.placebo_means, "the placebo sets (mean effects)")
    return _claim(spec, **fields)


# ---- an estimate against KL-matched weight-noise draws --------------------------------------------------------------

def weight_noise(rng, effect, spec):
    """The trained model's mean over problems (bootstrap interval over problems) against ``draws`` noised models:
    each model (the trained one too) has its own offset ~ N(0, tau) and is measured on ``n`` problems; p =
    :func:`empirical_p` against the draws, reference their mean."""
    p = spec.params
    n, tau, sd = p["problems"], p["tau"], p["sd"]
    x = effect + tau * rng.standard_normal() + sd * rng.standard_normal(n)
    est = float(x.mean())
    boots = _boot_means(rng, x)
    draws = tau * rng.standard_normal(p["draws"]) + sd / math.sqrt(n) * rng.standard_normal(p["draws"])
    # a p that is a rank among noise draws comes with p_opposite: the rule decides it both ways from the ranks
    return _claim(spec, estimate=est, ci=percentile_ci(boots, est), p_value=empirical_p(est, draws),
                  p_opposite=empirical_p(est, draws, direction=-1), reference=float(draws.mean()), n=n,
                  unit="problems",
                  null=Null.from_samples("weight-noise", draws, "the same mean on KL-matched noised models"))


# ---- base-vs-itself: a statistic between two resamples of the same model -----------------------------------------

def _folded_mean(mu: float, var: float) -> float:
    s = math.sqrt(var)
    return s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * var)) + mu * (1 - 2 * stats.norm.cdf(-mu / s))


@functools.lru_cache
def unit_shift(effect: float, n: int) -> float:
    """The per-unit shift that raises E[mean over units of |post − base|] above the base-vs-itself null's expectation
    (two bootstrap resamples of n examples) by ``effect``."""
    if effect == 0:
        return 0.0
    null = _folded_mean(0.0, 2 * (n - 1) / n ** 2)
    return float(optimize.brentq(lambda d: _folded_mean(d, 2 / n) - null - effect, 0.0, 10.0))


def base_vs_itself(rng, effect, spec):
    """Mean over units of |mean post − mean base| (independent examples, unit noise 1); null: the same statistic
    between two resamples of the base's examples; interval: paired resamples of post and base."""
    p = spec.params
    n, m = p["examples"], p["units"]
    base = rng.standard_normal((n, m))
    post = unit_shift(effect, n) + rng.standard_normal((n, m))
    stat = lambda a, b: np.abs(a - b).mean(-1)  # noqa: E731
    est = float(stat(post.mean(0), base.mean(0)))
    w = _weights(rng, n, N_BOOT)
    boots = stat(w @ post, w @ base)
    null = stat(_weights(rng, n, p["null_draws"]) @ base, _weights(rng, n, p["null_draws"]) @ base)
    return _claim(spec, estimate=est, ci=percentile_ci(boots, est), p_value=empirical_p(est, null),
                  reference=float(null.mean()), n=n, unit="examples",
                  null=Null.from_samples("base-vs-itself", null, "the statistic between two base resamples"))


# ---- correlation over checkpoints, runs as the unit --------------------------------------------------------------

def _walks(rng: np.random.Generator, rho: float, runs: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    dx = rng.standard_normal((runs, points))
    dy = rho * dx + math.sqrt(1 - rho * rho) * rng.standard_normal((runs, points))
    return np.cumsum(dx, 1), np.cumsum(dy, 1)


def _row_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


@functools.lru_cache
def step_correlation(r: float, points: int, draws: int = 20000) -> float:
    """The correlation of two random walks' steps that gives an expected Pearson r of ``r`` over ``points``
    checkpoints (a seeded Monte Carlo, solved by bisection)."""
    if r == 0:
        return 0.0
    z = np.random.default_rng(12345).standard_normal((2, draws, points))
    x = np.cumsum(z[0], 1)

    def mean_r(rho):
        return float(_row_r(x, np.cumsum(rho * z[0] + math.sqrt(1 - rho * rho) * z[1], 1)).mean()) - r
    return float(optimize.brentq(mean_r, 0.0, 0.999, xtol=1e-4))


def correlation(rng, effect, spec):
    """Per run, Pearson r of two random walks over its checkpoints; the claim is the mean over runs
    (:func:`nulls.per_run_statistic`: t-interval, exact sign-flip p). ``legacy``: every run's checkpoints pooled,
    p from permuting the checkpoints, interval from a bootstrap of the checkpoints."""
    p = spec.params
    x, y = _walks(rng, step_correlation(effect, p["checkpoints"]), p["runs"], p["checkpoints"])
    if spec.legacy:
        xs, ys = x.ravel(), y.ravel()
        est = nulls.pearson(xs, ys)
        perm = _row_r(xs, ys[np.argsort(rng.random((N_BOOT, len(ys))), 1)])
        idx = rng.integers(0, len(xs), (N_BOOT, len(xs)))
        boots = _row_r(xs[idx], ys[idx])
        return _claim(spec, estimate=est, ci=percentile_ci(boots, est), p_value=empirical_p(est, perm),
                      null=Null.from_samples("permutation", perm, "r with the checkpoints shuffled"),
                      n=len(xs), unit="checkpoints")
    run = nulls.per_run_statistic(_row_r(x, y), direction=spec.direction)
    return _claim(spec, **run.claim_fields(),
                  null=Null("permutation", 2 ** run.n, {}, "every sign flip of the runs' r"))


def runs_difference(rng, effect, spec):
    """One value per run (normal, run-to-run sd 1), the first group shifted by the effect;
    :func:`nulls.runs_difference` (Welch interval, exact permutation p over the splits of the runs)."""
    p = spec.params
    run = nulls.runs_difference(effect + rng.standard_normal(p["a"]), rng.standard_normal(p["b"]),
                                direction=spec.direction)
    return _claim(spec, **run.claim_fields(),
                  null=Null("permutation", round(1 / run.p_floor), {}, "every split of the runs into two groups"))


# ---- the paths -----------------------------------------------------------------------------------------------------

def _spec(family, design, simulate, null, n, unit, sesoi, noise, direction=1, legacy=False, **params) -> Spec:
    name = f"{family}:{design}" + (":legacy" if legacy else "")
    return Spec(name, family, null, direction, n, unit, sesoi, design, noise, simulate, params, legacy)


_PAIRED = "per-prompt 0/1 paired differences, discordant with probability {q}"
PATHS: dict[str, Spec] = {s.name: s for s in (
    _spec("paired-difference", "binary-40", paired, "permutation", 40, "prompts", 0.10,
          _PAIRED.format(q=0.3), kind="binary", prompts=40, discordant=0.3),
    _spec("paired-difference", "binary-120", paired, "permutation", 120, "prompts", 0.10,
          _PAIRED.format(q=0.3), kind="binary", prompts=120, discordant=0.3),
    _spec("paired-difference", "normal-60", paired, "permutation", 60, "prompts", 0.10,
          "per-prompt differences ~ N(effect, 0.35)", kind="normal", prompts=60, sd=0.35),
    _spec("no-effect", "binary-40", paired, "permutation", 40, "prompts", 0.10, _PAIRED.format(q=0.2),
          direction=0, kind="binary", prompts=40, discordant=0.2),
    _spec("no-effect", "binary-120", paired, "permutation", 120, "prompts", 0.10, _PAIRED.format(q=0.2),
          direction=0, kind="binary", prompts=120, discordant=0.2),
    _spec("count", "144-units", count, "base-vs-itself", 64, "pairs", 2.0,
          "144 units, 64 pairs, null units pass the margin with probability 0.02; 100 null draws",
          units=144, pairs=64, pi0=0.02, null_draws=100),
    _spec("count", "16-heads", count, "base-vs-itself", 40, "pairs", 2.0,
          "16 heads (the organism), 40 pairs, null heads pass the margin with probability 0.005; 100 null draws",
          units=16, pairs=40, pi0=0.005, null_draws=100),
    _spec("rank-among-sets", "8-choose-2", placebo, "placebo-sets", 40, "problems", 3.0,
          "per-unit effects lognormal(0, 1), per-problem noise sd 1, 40 problems, 27 placebo sets",
          units=8, size=2, problems=40, effects="lognormal", problem_sd=1.0),
    _spec("rank-among-sets", "12-choose-3", placebo, "placebo-sets", 40, "problems", 3.0,
          "per-unit effects exponential(1), per-problem noise sd 1, 40 problems, 219 placebo sets",
          units=12, size=3, problems=40, effects="exponential", problem_sd=1.0),
    _spec("rank-among-sets", "24-choose-3", placebo, "placebo-sets", 40, "problems", 4.0,
          "per-unit effects lognormal(0, 1), per-problem noise sd 1, 40 problems, 2023 placebo sets",
          units=24, size=3, problems=40, effects="lognormal", problem_sd=1.0),
    _spec("weight-noise", "20-draws", weight_noise, "weight-noise", 60, "problems", 0.3,
          "60 problems (sd 1), 20 noise draws that differ only by measurement noise (tau = 0)",
          problems=60, sd=1.0, tau=0.0, draws=20),
    _spec("weight-noise", "50-draws-spread", weight_noise, "weight-noise", 60, "problems", 0.3,
          "60 problems (sd 1), 50 noise draws whose model-to-model spread equals the measurement se (tau = 0.13)",
          problems=60, sd=1.0, tau=round(1 / math.sqrt(60), 4), draws=50),
    _spec("base-vs-itself", "12-units", base_vs_itself, "base-vs-itself", 64, "examples", 0.06,
          "mean over 12 units of |post − base|, 64 examples, unit noise sd 1, 100 null draws",
          units=12, examples=64, null_draws=100),
    _spec("correlation-over-checkpoints", "3x12", correlation, "permutation", 3, "runs", 0.4,
          "two unrelated random walks per run, 3 runs × 12 checkpoints", runs=3, checkpoints=12),
    _spec("correlation-over-checkpoints", "5x10", correlation, "permutation", 5, "runs", 0.4,
          "two unrelated random walks per run, 5 runs × 10 checkpoints", runs=5, checkpoints=10),
    _spec("correlation-over-checkpoints", "8x8", correlation, "permutation", 8, "runs", 0.4,
          "two unrelated random walks per run, 8 runs × 8 checkpoints", runs=8, checkpoints=8),
    _spec("runs-difference", "3v3", runs_difference, "permutation", 6, "runs", 1.0,
          "one value per run, run-to-run sd 1, 3 runs against 3", a=3, b=3),
    _spec("runs-difference", "6v6", runs_difference, "permutation", 12, "runs", 1.0,
          "one value per run, run-to-run sd 1, 6 runs against 6", a=6, b=6),
    _spec("seeds-pooled", "3x60", seeds_pooled, "permutation", 180, "prompts", 0.10,
          "3 independent seeds of a 60-prompt paired difference (0/1, discordant 0.3), fixed-effect pooled",
          seeds=3, kind="binary", prompts=60, discordant=0.3, shared=False, spread=0.0),
    _spec("seeds-pooled", "3x60-shared", seeds_pooled, "permutation", 60, "prompts", 0.10,
          "3 seeds on the same 60 prompts, each prompt's effect ± 0.15 around the mean (0/1, discordant 0.3), "
          "pooled as dependent seeds", seeds=3, kind="binary", prompts=60, discordant=0.3, shared=True, spread=0.15),
    _spec("correlation-over-checkpoints", "5x10", correlation, "permutation", 50, "checkpoints", 0.4,
          "the 5 × 10 checkpoints pooled, p from permuting them, interval from a bootstrap of them", legacy=True,
          runs=5, checkpoints=10),
    _spec("rank-among-sets", "12-choose-3", placebo, "permutation", 40, "problems", 3.0,
          "the 12-choose-3 design decided from the interval around the placebos' mean", legacy=True,
          units=12, size=3, problems=40, effects="exponential", problem_sd=1.0),
)}
