"""Circuit stability: how much of an EAP / EAP-IG circuit survives resampling its pairs (inclusion frequencies, stable
sets, Jaccard with intervals, top-n sensitivity, ig_steps convergence). See ``docs/methods.md`` ("EAP-IG", and
"Claims and nulls" for the nulls).

Input: :class:`~toolkit.methods.eap.Scores` with per-example scores ``x_i`` ``[S, T]`` for pairs i = 1…N
(``eap.attribute(..., per_example=True)``). The score of any multiset of pairs is the mean of their ``x_i`` (exact:
attribution is a mean over pairs), so no resample is ever recomputed on the model.

- **Bootstrap circuits.** Resample b = 1…B draws N pairs with replacement (numpy generator seeded with ``seed``);
  its circuit is the top-``top_n`` edges by |mean score|, dead nodes pruned: exactly ``eap.select(top_n=...,
  prune=True)``, batched here (:func:`select_many`; a test compares the two).
- **Inclusion frequency** of an edge or head: the share of the B circuits containing it (a head is in a circuit when
  one of its outgoing edges is, as ``Circuit.heads``). Heads on a ``[n_layers, n_heads]`` grid.
- **Stable set**: heads (edges) with inclusion ≥ ``threshold``, by default :data:`STABLE_THRESHOLD` = 0.8 (in at
  least four of five resampled circuits).
- **Jaccard** ``|A ∩ B| / |A ∪ B|`` of two circuits' head (or edge) sets on all pairs; its interval is the percentile
  interval of ``J(A_b, B_b)``, resample b of A paired with resample b of B (:func:`jaccard`).
- **Top-n sensitivity**: per ``top_n``, the mean and 5–95% range of ``J(C_b, C)`` between each bootstrap circuit and
  the all-pairs circuit, heads and edges (the same resamples for every ``top_n``).
- **ig_steps convergence**: Spearman and Pearson correlation over the valid edges of scores made with m steps and with
  more (e.g. 5 against 20), and the Jaccard of their top-n circuits (:func:`ig_convergence`).
- **Head importance** ``I(l, h) = Σ_t |s(h → t)|`` over every valid edge leaving the head, divided by ``Σ |s|`` over
  all valid edges (a share: models whose metric scale differs compare); per resample in ``importance``.

Emergent heads against the base-vs-itself null and the change score: :mod:`toolkit.evaluation.emergence`.
Result dataclasses give claims nulls (:class:`toolkit.evaluation.claims.Null`, kind ``bootstrap-resample``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core.stats import correlation
from toolkit.core.units import Head
from toolkit.evaluation.claims import Null
from toolkit.methods import eap

STABLE_THRESHOLD = 0.8  # stable set: inclusion in at least 80% of bootstrap circuits
EPS = 1e-12
_CHUNK_ELEMENTS = 40_000_000  # score elements per batched selection (memory bound)


class StabilityError(ValueError):
    """Bad input to a stability computation; the message says what to pass instead."""


# ---- resampling and batched selection -----------------------------------------------------------------------------

def resample_counts(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` counts: how often each of ``n`` items is drawn in each bootstrap resample (seeded)."""
    if n < 1 or n_boot < 1:
        raise StabilityError(f"resampling needs n >= 1 items and n_boot >= 1 resamples, got {n} and {n_boot}")
    return counts_of(np.random.default_rng(seed).integers(0, n, size=(n_boot, n)), n)


def counts_of(idx: np.ndarray, n: int) -> np.ndarray:
    """Rows of drawn indices ``[B, n]`` → counts ``[B, n]``."""
    return np.bincount((idx + np.arange(len(idx))[:, None] * n).ravel(), minlength=len(idx) * n).reshape(-1, n)


def per_example_rows(scores: eap.Scores) -> torch.Tensor:
    if not isinstance(scores, eap.Scores):
        raise StabilityError(f"expected toolkit.methods.eap.Scores, got {type(scores).__name__}")
    if scores.per_example is None:
        raise StabilityError("these scores have no per-example rows; compute them with "
                             "eap.attribute(..., per_example=True)")
    return scores.per_example.reshape(len(scores.per_example), -1)


def _wiring(g: eap.Graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``owners`` ``[T, S]`` (source s reads target t), ``inputs`` ``[S, T]`` (target t feeds source s), and the head
    sources ``[L, H]``."""
    owners = torch.zeros(g.n_targets, g.n_sources)
    for t in range(g.n_targets):
        owners[t, g.target_owner(t)] = 1.0
    inputs = torch.zeros(g.n_sources, g.n_targets)
    for s in range(g.n_sources):
        inputs[s, g.source_inputs(s)] = 1.0
    heads = torch.tensor([[g.head_source(layer, h) for h in range(g.n_heads)] for layer in range(g.n_layers)])
    return owners, inputs, heads


def select_many(graph: eap.Graph, values: torch.Tensor, valid: torch.Tensor, top_n: int) -> torch.Tensor:
    """``eap.select(top_n=top_n, absolute=True, prune=True)`` for a batch of score matrices ``[B, S, T]``: the
    circuits' edges ``[B, S, T]`` (bool)."""
    if top_n < 0:
        raise StabilityError(f"top_n must be >= 0, got {top_n}")
    b, s, t = values.shape
    key = values.abs().masked_fill(~valid, -float("inf")).reshape(b, -1)
    chosen = torch.zeros(b, s * t, dtype=torch.bool)
    k = min(top_n, int(valid.sum()))
    if k:
        chosen.scatter_(1, torch.topk(key, k, dim=1).indices, True)
    e = chosen.view(b, s, t) & valid
    owners, inputs, _ = _wiring(graph)
    while True:
        before = int(e.sum())
        alive_t = (e.any(2).float() @ owners.T) > 0
        alive_t[:, graph.logits_target] = True
        e &= alive_t[:, None, :]
        alive_s = (e.any(1).float() @ inputs.T) > 0
        alive_s[:, 0] = True
        e &= alive_s[:, :, None]
        if int(e.sum()) == before:
            return e


def _importance(graph: eap.Graph, values: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """Head importance shares ``[B, L, H]`` of score matrices ``[B, S, T]`` (see the module docstring)."""
    a = values.abs() * valid
    per_source = a.sum(2) / a.sum((1, 2)).clamp_min(EPS)[:, None]
    return per_source[:, _wiring(graph)[2]].numpy()


def resample_circuits(scores: eap.Scores, counts: np.ndarray,
                      top_n: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Per resample (rows of ``counts`` ``[B, N]``): circuit edges ``[B, S, T]``, heads ``[B, L, H]`` and head
    importance ``[B, L, H]``."""
    per, g = per_example_rows(scores), scores.graph
    if counts.shape[1] != len(per):
        raise StabilityError(f"resample counts cover {counts.shape[1]} pairs; the scores have {len(per)}")
    heads_idx = _wiring(g)[2]
    chunk = max(1, _CHUNK_ELEMENTS // per.shape[1])
    edges, heads, imp = [], [], []
    for start in range(0, len(counts), chunk):
        c = torch.from_numpy(counts[start:start + chunk]).to(per.dtype)
        values = (c @ per / c.sum(1, keepdim=True)).view(len(c), g.n_sources, g.n_targets)
        e = select_many(g, values, scores.valid, top_n)
        edges.append(e)
        heads.append(e.any(2)[:, heads_idx].numpy())
        imp.append(_importance(g, values, scores.valid))
    return torch.cat(edges), np.concatenate(heads), np.concatenate(imp)


def grid_set(grid: np.ndarray) -> frozenset[Head]:
    return frozenset((int(layer), int(h)) for layer, h in zip(*np.nonzero(grid)))


# ---- one circuit's bootstrap ----------------------------------------------------------------------------------------

@dataclass
class CircuitBootstrap:
    """Bootstrap circuits of one set of scores: per resample ``edges`` ``[B, S, T]``, ``heads`` ``[B, L, H]`` (bool)
    and ``importance`` ``[B, L, H]``; the all-pairs circuit (``full_edges``, ``full_heads_grid``,
    ``full_importance``); ``counts`` ``[B, N]`` the resamples."""

    graph: eap.Graph
    top_n: int
    threshold: float
    seed: int
    counts: np.ndarray
    edges: torch.Tensor
    heads: np.ndarray
    importance: np.ndarray
    full_edges: torch.Tensor
    full_heads_grid: np.ndarray
    full_importance: np.ndarray

    @property
    def n_boot(self) -> int:
        return len(self.counts)

    @property
    def n_pairs(self) -> int:
        return self.counts.shape[1]

    @property
    def edge_inclusion(self) -> torch.Tensor:
        """``[S, T]``: share of resampled circuits containing each edge."""
        return self.edges.double().mean(0)

    @property
    def head_inclusion(self) -> np.ndarray:
        """``[L, H]``: share of resampled circuits containing each head."""
        return self.heads.mean(0)

    @property
    def stable_heads(self) -> frozenset[Head]:
        return grid_set(self.head_inclusion >= self.threshold)

    @property
    def circuit(self) -> eap.Circuit:
        return eap.Circuit(self.full_edges, self.graph)

    @property
    def full_heads(self) -> frozenset[Head]:
        return grid_set(self.full_heads_grid)

    @property
    def n_heads(self) -> np.ndarray:
        """``[B]``: heads per resampled circuit."""
        return self.heads.sum((1, 2))

    @property
    def new_heads(self) -> np.ndarray:
        """``[B]``: heads of each resampled circuit that are not in the all-pairs circuit."""
        return (self.heads & ~self.full_heads_grid).sum((1, 2))

    def null(self, statistic: str = "n_heads") -> Null:
        """A ``bootstrap-resample`` null of ``n_heads`` (heads per circuit) or ``new_heads``."""
        if statistic not in ("n_heads", "new_heads"):
            raise StabilityError(f"unknown statistic {statistic!r}; choose 'n_heads' or 'new_heads'")
        what = ("heads per resampled circuit" if statistic == "n_heads" else
                "heads of a resampled circuit absent from the all-pairs circuit")
        return Null.from_samples("bootstrap-resample", getattr(self, statistic),
                                 f"{what}; {self.n_boot} resamples of {self.n_pairs} pairs, top {self.top_n}")

    def summary(self) -> dict:
        return {"n_boot": self.n_boot, "n_pairs": self.n_pairs, "top_n": self.top_n, "threshold": self.threshold,
                "head_inclusion": np.round(self.head_inclusion, 4).tolist(), "full_heads": sorted(self.full_heads),
                "stable_heads": sorted(self.stable_heads), "n_heads_mean": float(self.n_heads.mean())}


def bootstrap_circuit(scores: eap.Scores, *, top_n: int, n_boot: int = 200, seed: int = 0,
                      threshold: float = STABLE_THRESHOLD, counts: np.ndarray | None = None) -> CircuitBootstrap:
    """:class:`CircuitBootstrap` of ``scores`` (which need ``per_example``): ``n_boot`` resamples of its pairs, or
    the given ``counts`` ``[B, N]`` (how often each pair is in each resample, e.g. one pair each)."""
    if not 0 < threshold <= 1:
        raise StabilityError(f"threshold must be in (0, 1], got {threshold}")
    n = len(per_example_rows(scores))
    counts = resample_counts(n, n_boot, seed) if counts is None else np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] != n or (counts.sum(1) < 1).any():
        raise StabilityError(f"counts must be [B, {n}] with at least one pair per row, got {counts.shape}")
    edges, heads, imp = resample_circuits(scores, counts, top_n)
    full = select_many(scores.graph, scores.values[None], scores.valid, top_n)
    return CircuitBootstrap(scores.graph, top_n, threshold, seed, counts, edges, heads, imp, full[0],
                            full[0].any(1)[_wiring(scores.graph)[2]].numpy(),
                            _importance(scores.graph, scores.values[None], scores.valid)[0])


# ---- overlap, top-n sensitivity, ig_steps convergence -------------------------------------------------------------

def _jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard of boolean arrays ``[B, ...]`` (NaN where both are empty)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    union = (a | b).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, (a & b).sum(1) / np.maximum(union, 1), np.nan)


@dataclass
class Overlap:
    """Jaccard of two circuits' ``unit`` sets (``"heads"`` or ``"edges"``): all-pairs ``estimate``, percentile
    interval ``ci`` over paired resamples, and the resampled values ``samples``."""

    unit: str
    estimate: float
    ci: tuple[float, float]
    samples: np.ndarray

    def null(self) -> Null:
        return Null.from_samples("bootstrap-resample", self.samples,
                                 f"Jaccard of the two circuits' {self.unit} over paired resamples of their pairs")


def jaccard(a: CircuitBootstrap, b: CircuitBootstrap, *, unit: str = "heads", level: float = 0.95) -> Overlap:
    """:class:`Overlap` of two bootstraps (same graph and ``n_boot``; resample b of ``a`` with resample b of ``b``)."""
    if unit not in ("heads", "edges"):
        raise StabilityError(f"unit must be 'heads' or 'edges', got {unit!r}")
    if a.graph != b.graph or a.n_boot != b.n_boot:
        raise StabilityError(f"jaccard needs two bootstraps of one graph with as many resamples (got {a.n_boot} and "
                             f"{b.n_boot}); bootstrap both with the same n_boot")
    if unit == "heads":
        full = _jaccard(a.full_heads_grid[None], b.full_heads_grid[None])[0]
        samples = _jaccard(a.heads, b.heads)
    else:
        full = _jaccard(a.full_edges[None].numpy(), b.full_edges[None].numpy())[0]
        samples = _jaccard(a.edges.numpy(), b.edges.numpy())
    return Overlap(unit, float(full), interval(samples, level), samples)


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def interval(x: np.ndarray | None, level: float) -> tuple[float, float]:
    """Percentile interval of the finite values of ``x`` (NaNs if there are none)."""
    if x is None:
        return (float("nan"), float("nan"))
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return (float("nan"), float("nan"))
    q = (1 - level) / 2
    return (float(np.quantile(x, q)), float(np.quantile(x, 1 - q)))


@dataclass
class Sensitivity:
    """Per ``top_ns[k]``: mean Jaccard of bootstrap circuits with the all-pairs circuit (``heads``, ``edges``), the
    5–95% range of the heads' (``heads_low``, ``heads_high``), the all-pairs circuit's head count ``n_heads`` and
    the stable heads' count ``n_stable``."""

    top_ns: list[int]
    heads: np.ndarray
    heads_low: np.ndarray
    heads_high: np.ndarray
    edges: np.ndarray
    n_heads: np.ndarray
    n_stable: np.ndarray

    def to_results(self) -> dict:
        return {k: v if k == "top_ns" else np.round(v, 4).tolist() for k, v in self.__dict__.items()}


def top_n_sensitivity(scores: eap.Scores, top_ns: Sequence[int], *, n_boot: int = 100, seed: int = 0,
                      threshold: float = STABLE_THRESHOLD) -> Sensitivity:
    """:class:`Sensitivity` of ``scores`` over ``top_ns`` (the same ``n_boot`` resamples for every ``top_n``)."""
    rows = []
    for top_n in top_ns:
        bs = bootstrap_circuit(scores, top_n=int(top_n), n_boot=n_boot, seed=seed, threshold=threshold)
        jh = _jaccard(bs.heads, np.broadcast_to(bs.full_heads_grid, bs.heads.shape))
        je = _jaccard(bs.edges.numpy(), np.broadcast_to(bs.full_edges.numpy(), bs.edges.shape))
        lo, hi = interval(jh, 0.9)
        rows.append((_mean(jh), lo, hi, _mean(je), len(bs.full_heads), len(bs.stable_heads)))
    cols = [np.array(c, dtype=float) for c in zip(*rows)] if rows else [np.zeros(0)] * 6
    return Sensitivity([int(t) for t in top_ns], *cols)


@dataclass
class Convergence:
    """Scores with ``steps[0]`` against ``steps[1]`` IG steps: rank (Spearman) and Pearson correlation over ``n``
    valid edges, and the Jaccard of their top-``top_n`` circuits' heads and edges."""

    steps: tuple
    spearman: float
    pearson: float
    n: int
    top_n: int | None
    jaccard_heads: float
    jaccard_edges: float


def ig_convergence(coarse: eap.Scores, fine: eap.Scores, *, top_n: int | None = None) -> Convergence:
    """:class:`Convergence` of two score sets of one graph (e.g. m = 5 against m = 20)."""
    if coarse.graph != fine.graph or not torch.equal(coarse.valid, fine.valid):
        raise StabilityError("ig_convergence needs two Scores of the same graph")
    c = correlation(coarse.flat().numpy(), fine.flat().numpy())
    jh = je = float("nan")
    if top_n is not None:
        e = select_many(coarse.graph, torch.stack([coarse.values, fine.values]), coarse.valid, top_n)
        jh = float(_jaccard(*(e.any(2)[:, _wiring(coarse.graph)[2]].numpy()[:, None]))[0])
        je = float(_jaccard(*(e.numpy()[:, None]))[0])
    return Convergence((coarse.meta.get("steps"), fine.meta.get("steps")), c["spearman_r"], c["pearson_r"], c["n"],
                       top_n, jh, je)
