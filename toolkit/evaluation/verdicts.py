"""The verdict rule: from a claim's numbers to *reproduces*, *contradicts*, *inconclusive* or *artifact*, with the
reason, the power at the smallest effect of interest, family-wise adjusted p-values and the pooling of seeds.

Everything here is pure arithmetic on numbers; :mod:`toolkit.evaluation.claims` calls it when a claim is
registered, the scorecard (:mod:`toolkit.run.report`) when it adjusts a family or pools seeds, and
:mod:`toolkit.evaluation.calibration` to show, by simulation, that every path of the rule gives at most 5% false
verdicts. The rule, in the paper's units (``d`` the paper's direction, ``ref`` the null's value, ``[lo, hi]`` the
95% interval, ``s`` the smallest effect of interest, SESOI, ``α`` 0.05):

Write ``e = d·(estimate − ref)`` for the effect in the paper's direction and ``[E_lo, E_hi]`` for the interval in the
same units (``E_hi`` the end on the paper's side).

- **Directional findings** (``d = ±1``, a SESOI ``s > 0``). The decision boundary is ``b = s/2``:
  *reproduces* when the effect is significant in the paper's direction (``p < α`` with the family-adjusted p where
  the scorecard gave one, else ``E_lo > 0``) and the estimate is at least the boundary (``e ≥ b``);
  *contradicts* when the interval lies wholly below the boundary (``E_hi < b``): reason ``opposite`` when it lies
  wholly on the other side of the null (``E_hi < 0``), else ``absent`` (an equivalence test); else *inconclusive*.
  Why half the SESOI: an effect of the SESOI's size is then called *absent* with probability below 2.5% and found
  with the power a plain test has, no effect is found with probability at most ``α``, and the rule is monotone in
  n: an estimate at or above ``b`` can never be called absent and one below it can never reproduce, so more data
  never turns a decided verdict into its opposite unless the estimate moves (with the boundary at ``s`` itself, an
  effect of the SESOI's size could reproduce at most half the time).
- **Rank-based findings** (a ``placebo-sets`` null: the target among every same-size set; or any claim whose p is a
  rank among draws and that gives ``p_opposite``, e.g. among KL-matched noise models): both ways from the rank
  distribution, never from the placebos' mean (set effects are skewed): *reproduces* when the rank p-value is below
  ``α`` and the difference from the placebos' mean is at least ``b``; *contradicts* (``opposite``) when the rank
  p-value from the other end (``p_opposite``) is below ``α``. Under exchangeable sets each happens with
  probability at most ``α``.
- **No-effect findings** (``d = 0``: the paper reports no change): *reproduces* when the interval lies inside
  ``ref ± s`` (equivalence); *contradicts* when it lies wholly outside that band; else *inconclusive*.
- **Targets and checks** (the organism's specification, a method's sanity): with a SESOI the same rule; without,
  ``s = 0`` (a threshold: *reproduces* when the interval or p clears it, *contradicts* when it lies below it).

*Inconclusive* always gives its reason (:data:`REASONS`, first that applies): ``not-measured`` (a NaN estimate or
interval), ``no-interval`` (an interval of zero width: the selection or the noise was not resampled, so it cannot
decide), ``floor`` (the smallest p-value the test can give, after the family's adjustment, is not below ``α``),
``seeds-disagree`` (set when pooling seeds that decided opposite ways), ``underpowered`` (power at the SESOI below
0.8; :func:`power` gives the n that would reach 0.8), ``undecided`` (powered, but the estimate sits between the
verdicts). A finding that reproduces on one of its controls (a random-weights model, the untrained start,
KL-matched weight noise) is an ``artifact``, with the control as its reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

VERDICTS = ("reproduces", "contradicts", "inconclusive", "artifact")
REASONS = ("not-measured", "no-interval", "floor", "seeds-disagree", "underpowered", "undecided")
CONTRADICT_REASONS = ("opposite", "absent")
Z95 = float(stats.norm.ppf(0.975))  # intervals are 95% two-sided
TARGET_POWER = 0.8


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def se_from_ci(ci: Sequence[float]) -> float:
    """The standard error a 95% interval implies, ``(hi − lo) / (2 · 1.96)`` (NaN where it is not finite)."""
    lo, hi = float(ci[0]), float(ci[1])
    return (hi - lo) / (2 * Z95) if _finite(lo, hi) else math.nan


def power(sesoi: float | None, ci: Sequence[float], *, alpha: float = 0.05, n: int | None = None,
          target: float = TARGET_POWER) -> tuple[float, int | None]:
    """Power of a one-sided level-``alpha`` test to detect an effect of size ``sesoi`` with the standard error the
    interval implies (normal approximation), and, when the number of units ``n`` is known, the n that would reach
    ``target`` power (the standard error shrinks as 1/√n). ``(nan, None)`` without a SESOI or a finite interval."""
    se = se_from_ci(ci)
    if sesoi is None or not _finite(se) or sesoi <= 0:
        return math.nan, None
    if se == 0:
        return 1.0, n
    z_a = stats.norm.ppf(1 - alpha)
    pw = float(stats.norm.cdf(sesoi / se - z_a))
    need = None
    if n:
        need = int(math.ceil(n * ((z_a + stats.norm.ppf(target)) * se / sesoi) ** 2))
    return pw, need


def decide(estimate: float, ci: Sequence[float], *, direction: int, reference: float = 0.0,
           sesoi: float | None = None, p_value: float | None = None, p_opposite: float | None = None,
           rank_based: bool = False, exact: bool = False, alpha: float = 0.05) -> tuple[str, str]:
    """``(verdict, reason)`` by the rule in the module docstring, before the inconclusive reasons that need more
    than the numbers (floor, power, seeds): an inconclusive verdict comes back with reason ``""``, except
    ``not-measured`` and ``no-interval``. ``exact``: the interval is exact (a threshold, an exact count), so a zero
    width is no defect."""
    if direction not in (-1, 0, 1):
        raise ValueError(f"direction must be +1, -1 or 0, got {direction!r}")
    lo, hi = float(ci[0]), float(ci[1])
    if not _finite(estimate, lo, hi):
        return "inconclusive", "not-measured"
    s = 0.0 if sesoi is None else float(sesoi)
    if direction == 0:
        if sesoi is None:
            raise ValueError("a 'no effect' claim (direction 0) needs a smallest effect of interest (its margin)")
        if reference - s < lo and hi < reference + s:
            return "reproduces", "equivalent"
        if lo >= reference + s or hi <= reference - s:
            return "contradicts", "opposite"
        return "inconclusive", "no-interval" if lo == hi and not exact else ""
    far = hi if direction > 0 else lo
    near = lo if direction > 0 else hi
    e, e_lo, e_hi = direction * (estimate - reference), direction * (near - reference), direction * (far - reference)
    b = s / 2
    if rank_based:
        if p_value is not None and p_value < alpha and e > 0 and e >= b:
            return "reproduces", ""
        if p_opposite is not None and p_opposite < alpha:
            return "contradicts", "opposite"
        return "inconclusive", ""
    if lo == hi and not exact:
        return "inconclusive", "no-interval"
    significant = p_value < alpha if p_value is not None and math.isfinite(p_value) else e_lo > 0
    if significant and e > 0 and e >= b:
        return "reproduces", ""
    if e_hi < b:
        return "contradicts", "opposite" if e_hi < 0 else "absent"
    return "inconclusive", ""


def holm(p_values: Sequence[float | None]) -> tuple[list[float | None], list[int]]:
    """Holm's step-down adjustment of one family: the adjusted p-values (``None`` stays ``None`` and is not counted)
    and each p's multiplier ``m − j + 1`` (``j`` its position among the sorted p's; 1 for ``None``)."""
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    m = len(idx)
    adjusted: list[float | None] = [None if p is None or not math.isfinite(p) else float(p) for p in p_values]
    factors = [1] * len(p_values)
    running = 0.0
    for j, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        factors[i] = m - j
        running = max(running, min(1.0, (m - j) * float(p_values[i])))
        adjusted[i] = running
    return adjusted, factors


def fisher(p_values: Sequence[float]) -> float:
    """One-sided p-values of independent replications combined by Fisher's method (``−2 Σ ln p`` against χ² with
    2k degrees of freedom). Chosen over Stouffer's z because the studies' p-values are often discrete: a seed whose
    count is 0 has p = 1, which Fisher's method reads as no evidence and Stouffer's as infinite evidence against."""
    p = np.clip(np.asarray(p_values, dtype=float), 1e-300, 1.0)
    return float(stats.chi2.sf(-2 * np.log(p).sum(), 2 * len(p)))


def pool(estimates: Sequence[float], cis: Sequence[Sequence[float]], p_values: Sequence[float | None], *,
         independent: bool = True) -> tuple[float, tuple[float, float], float | None]:
    """One pre-declared analysis over replications (seeds, runs): an estimate, its 95% interval and a p-value.

    Independent replications: the fixed-effect (inverse-variance) mean, its interval, and Fisher's combination
    (:func:`fisher`) of the one-sided p-values. Standard errors come from each interval (:func:`se_from_ci`);
    where one is zero or missing the replications are weighted equally and the interval is the t-interval across
    them.
    Dependent ones (seeds that draw overlapping prompts from one pool): the mean estimate, the mean of the interval
    ends (no narrowing) and twice the mean p-value (valid under any dependence). The p is ``None`` when one is
    missing."""
    est = np.asarray(estimates, dtype=float)
    ses = np.array([se_from_ci(c) for c in cis])
    if len(est) == 0 or not np.isfinite(est).all():
        return math.nan, (math.nan, math.nan), None
    ps = None if any(q is None or not math.isfinite(q) for q in p_values) else [float(q) for q in p_values]
    if not independent:
        lo = float(np.mean([c[0] for c in cis]))
        hi = float(np.mean([c[1] for c in cis]))
        mean = float(est.mean())
        return mean, (min(lo, mean), max(hi, mean)), None if ps is None else min(1.0, 2 * float(np.mean(ps)))
    if np.isfinite(ses).all() and (ses > 0).all():
        w = 1 / ses ** 2
        mean = float((w * est).sum() / w.sum())
        half = Z95 / math.sqrt(w.sum())
    else:
        mean = float(est.mean())
        half = float(stats.t.ppf(0.975, len(est) - 1) * est.std(ddof=1) / math.sqrt(len(est))) if len(est) > 1 \
            else math.nan
        if half == 0:
            half = math.nan  # identical seeds give no interval (they are not replications)
    return mean, (mean - half, mean + half), None if ps is None else fisher(ps)


def artifact_of(control_verdicts: Mapping[str, str]) -> str | None:
    """The first control on which the finding reproduces (its verdict there), or None."""
    return next((name for name, v in control_verdicts.items() if v == "reproduces"), None)
