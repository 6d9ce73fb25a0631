"""Bootstrap intervals and correlations against closed forms."""

import numpy as np
import pytest

from toolkit.core import stats


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(20) < 0.6, rng.random(2000) < 0.6
    a, b = stats.bootstrap_ci(small), stats.bootstrap_ci(large)
    assert a["low"] <= a["estimate"] <= a["high"] and a["estimate"] == pytest.approx(small.mean())
    assert (b["high"] - b["low"]) < (a["high"] - a["low"])
    # normal approximation of a proportion's 95% interval at n = 2000
    half = 1.96 * np.sqrt(large.mean() * (1 - large.mean()) / len(large))
    assert (b["high"] - b["low"]) / 2 == pytest.approx(half, rel=0.15)
    assert stats.bootstrap_ci([1.0, 1.0, 1.0]) == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    with pytest.raises(ValueError, match="at least one"):
        stats.bootstrap_ci([])


def test_paired_difference_and_format():
    ci = stats.paired_difference_ci([1, 1, 0, 1], [0, 1, 0, 0])
    assert ci["estimate"] == pytest.approx(0.5)
    assert stats.format_ci({"estimate": 0.5, "low": 0.25, "high": 0.75}) == "50.0% [25.0, 75.0]"
    with pytest.raises(ValueError, match="same shape"):
        stats.paired_difference_ci([1, 0], [1])


def test_correlation_matches_closed_forms_and_degrades_gracefully():
    x = np.arange(10.0)
    r = stats.correlation(x, 2 * x + 1)
    assert r["pearson_r"] == pytest.approx(1.0) and r["spearman_r"] == pytest.approx(1.0) and r["n"] == 10
    r = stats.correlation(x, x ** 3)  # monotone, not linear
    assert r["spearman_r"] == pytest.approx(1.0) and r["pearson_r"] < 1.0
    assert np.isnan(stats.correlation([1, 2], [3, 4])["pearson_r"])
    assert np.isnan(stats.correlation([1, 2, 3], [5, 5, 5])["spearman_r"])


def test_wilson_interval_and_newcombe_difference():
    from toolkit.core.stats import difference_ci, proportion_ci

    ci = proportion_ci(190, 200)  # the textbook Wilson interval for 95%: 0.9104 – 0.9726
    assert ci["estimate"] == 0.95 and ci["low"] == pytest.approx(0.9104, abs=1e-4)
    assert ci["high"] == pytest.approx(0.9726, abs=1e-4)
    assert proportion_ci(200, 200)["high"] == 1.0 and proportion_ci(0, 10)["low"] == 0.0
    d = difference_ci(ci, proportion_ci(100, 200))
    assert d["estimate"] == pytest.approx(0.45) and d["low"] < 0.45 < d["high"]
    with pytest.raises(ValueError):
        proportion_ci(3, 2)
