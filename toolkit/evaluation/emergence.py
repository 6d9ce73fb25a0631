"""Emergent heads of a post-trained model, counted against what the base model's own resampling noise produces
(the base-vs-itself null), and a continuous per-head change score. Built on :mod:`toolkit.evaluation.stability`
(bootstrap circuits from per-example scores, inclusion frequencies, head importance); see ``docs/methods.md``
("EAP-IG"; "Claims and nulls" for the null kinds).

- **Base-vs-itself null** (:func:`base_null`, R replicates): draw two independent resamples D1*, D2* of the base's
  pairs — two data sets the *unchanged* base model could have given — and for each the inclusion frequency ``f1``,
  ``f2`` of every head over ``n_inner`` bootstrap circuits of that resample ("resample twice"). Per replicate
  ``max_h (f1 − f2)``; the **margin** is its ``level`` quantile (:data:`NULL_LEVEL` = 0.95). The null has the
  base's number of pairs: a post-trained model scored on fewer pairs has noisier inclusion frequencies than it
  allows for (score both on the same inputs where that matters).
- **Emergent heads** (:func:`emergent_test`): ``f_post(h) − f_base(h) > margin``, with f the inclusion frequencies
  of the two models' bootstraps. Family-wise: about 5% of base-vs-itself replicates call *any* head emergent.
  Per-head p: ``(1 + #{r: max_r ≥ f_post(h) − f_base(h)}) / (1 + R)``. The **emergent count** comes with its null:
  per replicate ``#{h: f1 − f2 > margin}``. Count p (for k = count ≥ 1; 1 for k = 0): the k-th largest gain
  against the null's k-th largest, ``(1 + #{r: gain_(k),r ≥ gain_(k)}) / (1 + R)`` — for k = 1 the max-statistic
  p of "some head is emergent"; a finer p than comparing counts, which ties at 0 in most replicates.
- **Set difference** (the old definition): heads in the post-trained all-pairs circuit and not in the base's. Its
  null count: heads in D2*'s all-pairs circuit and not in D1*'s (two resampled base circuits, the analogue of two
  independent data sets; ``CircuitBootstrap.new_heads`` — a resample against the all-pairs circuit, one side
  resampled only — gives a narrower band).
- **Change score** ``E(l, h) = (I_post − I_pre) / (I_post + I_pre + ε)``, ε = 1e-12, in [−1, 1], with I the head
  importance share of :mod:`toolkit.evaluation.stability`. Interval: percentiles of E over paired resamples (post's
  resample b with the base's resample b); null band: percentiles of E between D2* and D1*.

Nulls for claims (:class:`toolkit.evaluation.claims.Null`) are of kind ``base-vs-itself``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.core.units import Head
from toolkit.evaluation.claims import Null
from toolkit.evaluation.stability import (
    EPS,
    CircuitBootstrap,
    StabilityError,
    counts_of,
    grid_set,
    interval,
    per_example_rows,
    resample_circuits,
)
from toolkit.methods import eap

NULL_LEVEL = 0.95  # the emergent margin: this quantile of the base-vs-itself max-over-heads inclusion difference


@dataclass
class Replicates:
    """R outer resamples of one model's pairs: ``inclusion[r]`` ``[L, H]`` (the share of ``n_inner`` bootstrap
    circuits of resample r that contain each head), ``heads[r]`` and ``importance[r]`` (resample r's own circuit and
    head importance)."""

    inclusion: np.ndarray
    heads: np.ndarray
    importance: np.ndarray
    n_inner: int

    @property
    def n(self) -> int:
        return len(self.inclusion)


def replicates(scores: eap.Scores, *, top_n: int, n_outer: int = 100, n_inner: int = 50, seed: int = 0) -> Replicates:
    """:class:`Replicates` of ``scores`` (with ``per_example``): ``n_outer`` resamples of its pairs, each with
    ``n_inner`` bootstrap circuits of its own (resamples of the resample)."""
    if n_outer < 1 or n_inner < 1:
        raise StabilityError(f"n_outer and n_inner must be >= 1, got {n_outer} and {n_inner}")
    n = len(per_example_rows(scores))
    rng = np.random.default_rng(seed)
    outer = rng.integers(0, n, size=(n_outer, n))  # [R, N] pair indices
    inner = outer[np.arange(n_outer)[:, None, None], rng.integers(0, n, size=(n_outer, n_inner, n))]  # [R, I, N]
    _, heads, _ = resample_circuits(scores, counts_of(inner.reshape(-1, n), n), top_n)
    _, own, imp = resample_circuits(scores, counts_of(outer, n), top_n)
    return Replicates(heads.reshape(n_outer, n_inner, *heads.shape[1:]).mean(1), own, imp, n_inner)


@dataclass
class BaseNull:
    """The base-vs-itself null (module docstring) from two independent :class:`Replicates` of the base, ``first``
    (D1*) and ``second`` (D2*): per replicate r, ``diff[r]`` = f2 − f1 ``[L, H]``, ``max_diff[r]``, the null
    emergent ``count[r]``, the set-difference count ``set_difference[r]`` and ``change[r]`` (E of D2* against D1*);
    ``margin`` the ``level`` quantile of ``max_diff``."""

    top_n: int
    level: float
    first: Replicates
    second: Replicates

    @property
    def n(self) -> int:
        return self.first.n

    @property
    def diff(self) -> np.ndarray:
        return self.second.inclusion - self.first.inclusion

    @property
    def max_diff(self) -> np.ndarray:
        return self.diff.reshape(self.n, -1).max(1)

    @property
    def margin(self) -> float:
        return float(np.quantile(self.max_diff, self.level))

    @property
    def count(self) -> np.ndarray:
        return (self.diff > self.margin).sum((1, 2))

    @property
    def set_difference(self) -> np.ndarray:
        return (self.second.heads & ~self.first.heads).sum((1, 2))

    @property
    def change(self) -> np.ndarray:
        return _change(self.second.importance, self.first.importance)


def base_null(base: eap.Scores, *, top_n: int, n_null: int = 100, n_inner: int = 50, level: float = NULL_LEVEL,
              seed: int = 0) -> BaseNull:
    """The :class:`BaseNull` of ``base`` (scores with ``per_example``): ``n_null`` replicates, each two resamples of
    its pairs (seeds ``seed`` and ``seed + 1``) with ``n_inner`` bootstrap circuits apiece."""
    if not 0 < level < 1:
        raise StabilityError(f"level must be in (0, 1), got {level}")
    first, second = (replicates(base, top_n=top_n, n_outer=n_null, n_inner=n_inner, seed=seed + k) for k in (0, 1))
    return BaseNull(top_n, level, first, second)


def _change(post: np.ndarray, pre: np.ndarray) -> np.ndarray:
    return (post - pre) / (post + pre + EPS)


@dataclass
class EmergentTest:
    """Emergent heads of a post-trained model against its base (module docstring). Grids ``[L, H]``:
    ``post_inclusion``, ``base_inclusion``, ``difference``, ``p_values``, ``change`` (E, all pairs) with
    ``change_low``/``change_high`` (paired-resample interval) and the null's ``change_null_low``/``_high``."""

    post_inclusion: np.ndarray
    base_inclusion: np.ndarray
    difference: np.ndarray
    p_values: np.ndarray
    margin: float
    heads: list[Head]
    set_difference: frozenset[Head]
    change: np.ndarray
    change_low: np.ndarray
    change_high: np.ndarray
    change_null_low: np.ndarray
    change_null_high: np.ndarray
    null: BaseNull
    count_samples: np.ndarray | None = None
    set_difference_samples: np.ndarray | None = None

    def count_ci(self, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the emergent count over paired replicates (post's r with the base's D1* r)."""
        return interval(self.count_samples, level)

    def set_difference_ci(self, level: float = 0.95) -> tuple[float, float]:
        return interval(self.set_difference_samples, level)

    @property
    def count(self) -> int:
        return len(self.heads)

    @property
    def count_p(self) -> float:
        """The k-th largest inclusion gain (k = count) against the null's k-th largest (module docstring)."""
        k = self.count
        if k == 0:
            return 1.0
        observed = np.sort(self.difference.ravel())[-k]
        null_k = np.sort(self.null.diff.reshape(self.null.n, -1), axis=1)[:, -k]
        return float((1 + (null_k >= observed).sum()) / (1 + self.null.n))

    @property
    def set_difference_p(self) -> float:
        return float((1 + (self.null.set_difference >= len(self.set_difference)).sum()) / (1 + self.null.n))

    def count_null(self) -> Null:
        return Null.from_samples("base-vs-itself", self.null.count, (
            f"emergent heads (inclusion gain > {self.margin:.2f}) between two resamples of the base's pairs, "
            f"{self.null.n} replicates"))

    def set_difference_null(self) -> Null:
        return Null.from_samples("base-vs-itself", self.null.set_difference, (
            f"heads in one resampled base circuit and not in another, {self.null.n} replicates"))

    def summary(self) -> dict:
        band = lambda x: {"mean": float(np.mean(x)), "q95": float(np.quantile(x, 0.95)), "max": int(np.max(x))}  # noqa: E731
        return {"heads": self.heads, "count": self.count, "count_p": self.count_p, "margin": self.margin,
                "count_null": band(self.null.count), "set_difference": sorted(self.set_difference),
                "set_difference_p": self.set_difference_p, "set_difference_null": band(self.null.set_difference),
                "difference": np.round(self.difference, 4).tolist(), "change": np.round(self.change, 4).tolist()}


def emergent_test(post: CircuitBootstrap, base: CircuitBootstrap, null: BaseNull, *,
                  post_replicates: Replicates | None = None, level: float = 0.95) -> EmergentTest:
    """:class:`EmergentTest` of ``post``'s bootstrap against ``base``'s, with ``null`` from :func:`base_null` of
    the base's scores (same ``top_n``; the two bootstraps need the same ``n_boot`` for the paired E interval).
    With ``post_replicates`` (:func:`replicates` of the post-trained scores, as many as the null's), the counts get
    intervals: replicate r of the post-trained model against the base's D1* replicate r."""
    if not post.top_n == base.top_n == null.top_n:
        raise StabilityError(f"post, base and null must use one top_n, got {post.top_n}, {base.top_n}, {null.top_n}")
    if post.graph != base.graph or post.n_boot != base.n_boot:
        raise StabilityError("post and base bootstraps need one graph and the same n_boot")
    diff = post.head_inclusion - base.head_inclusion
    p = (1 + (null.max_diff[None, None, :] >= diff[..., None]).sum(-1)) / (1 + null.n)
    picked = grid_set(diff > null.margin)
    heads = sorted(picked, key=lambda h: (-diff[h], h))
    boot = _change(post.importance, base.importance)
    q = (1 - level) / 2
    counts = set_diff = None
    if post_replicates is not None:
        if post_replicates.n != null.n:
            raise StabilityError(f"post_replicates has {post_replicates.n} replicates, the null {null.n}; make "
                                 "them with n_outer equal to the null's n_null")
        counts = (post_replicates.inclusion - null.first.inclusion > null.margin).sum((1, 2))
        set_diff = (post_replicates.heads & ~null.first.heads).sum((1, 2))
    return EmergentTest(post.head_inclusion, base.head_inclusion, diff, p, null.margin, heads,
                        post.full_heads - base.full_heads, _change(post.full_importance, base.full_importance),
                        np.quantile(boot, q, axis=0), np.quantile(boot, 1 - q, axis=0),
                        np.quantile(null.change, q, axis=0), np.quantile(null.change, 1 - q, axis=0), null,
                        counts, set_diff)
