"""Small statistics shared by the notebooks: bootstrap intervals over problems, paired differences, correlations.

Every interval is a percentile bootstrap over *problems* (the unit that was sampled), with a fixed seed so a rerun
reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as _stats


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``{"estimate", "low", "high"}``: ``statistic`` of ``values`` and its percentile-bootstrap interval.

    ``values`` is one number per problem (e.g. 1.0 if solved); with rows of several numbers (shape ``[n, ...]``)
    whole rows are resampled and ``statistic`` gets the resampled array.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = np.array([statistic(x[i]) for i in idx])
    alpha = (1 - level) / 2
    return {"estimate": float(statistic(x)), "low": float(np.quantile(boots, alpha)),
            "high": float(np.quantile(boots, 1 - alpha))}


def paired_difference_ci(treated: Sequence[float], baseline: Sequence[float], n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of ``treated − baseline`` over the same problems, with a paired bootstrap interval."""
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_boot=n_boot, level=level, seed=seed)


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlations with their two-sided p-values, and ``n``.

    Fewer than three points, or a constant series, gives NaN coefficients rather than an exception, so a notebook
    with a short run still reports something; check ``n`` before reading them.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"correlation needs two series of one length, got {len(x)} and {len(y)}")
    nan = float("nan")
    out = {"n": int(len(x)), "pearson_r": nan, "pearson_p": nan, "spearman_r": nan, "spearman_p": nan}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    pr, pp = _stats.pearsonr(x, y)
    sr, sp = _stats.spearmanr(x, y)
    out.update(pearson_r=float(pr), pearson_p=float(pp), spearman_r=float(sr), spearman_p=float(sp))
    return out


def format_ci(ci: dict[str, float], percent: bool = True) -> str:
    """``"61.0% [55.0, 67.0]"`` (or plain numbers when ``percent`` is false)."""
    if percent:
        return f"{100 * ci['estimate']:.1f}% [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"
    return f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def proportion_ci(successes: int, n: int, level: float = 0.95) -> dict[str, float]:
    """A rate ``successes / n`` with its Wilson score interval (good at rates near 0 or 1, where a bootstrap over
    problems collapses to a point)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"proportion_ci needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = float(_stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = round(max(0.0, centre - half), 12), round(min(1.0, centre + half), 12)  # no 1e-18 for 0
    return {"estimate": p, "low": float(low), "high": float(high)}


def difference_ci(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """``a − b`` of two rates with Wilson intervals (:func:`proportion_ci`), by Newcombe's square-and-add rule
    (conservative when the two rates come from the same problems and agree)."""
    d = a["estimate"] - b["estimate"]
    low = d - np.sqrt((a["estimate"] - a["low"]) ** 2 + (b["high"] - b["estimate"]) ** 2)
    high = d + np.sqrt((a["high"] - a["estimate"]) ** 2 + (b["estimate"] - b["low"]) ** 2)
    return {"estimate": float(d), "low": float(low), "high": float(high)}


def paired_rates_ci(a: Sequence[float], b: Sequence[float], boots: np.ndarray,
                    level: float = 0.95) -> tuple[float, float]:
    """An interval for ``mean(a) − mean(b)`` of paired 0/1 outcomes: the bootstrap percentile interval of ``boots``,
    unless every pair differs alike (the bootstrap then has zero width, e.g. 0% → 100% on every prompt), where it is
    Newcombe's interval of the two Wilson intervals (:func:`difference_ci`), which ignores the pairing and so is
    conservative. It always holds the estimate."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    est = float(a.mean() - b.mean())
    x = np.asarray(boots, dtype=float)
    alpha = (1 - level) / 2
    lo, hi = float(np.quantile(x, alpha)), float(np.quantile(x, 1 - alpha))
    if hi - lo > 0 or not set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}:
        return min(lo, est), max(hi, est)
    ci = difference_ci(proportion_ci(int(a.sum()), len(a), level), proportion_ci(int(b.sum()), len(b), level))
    return min(ci["low"], est), max(ci["high"], est)
