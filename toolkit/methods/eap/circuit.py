"""Stage 4 of EAP / EAP-IG: circuits from scores — selection, dead-node pruning, head importance.

- :func:`select` with ``method="top"``: the ``top_n`` edges by |score| (or signed score), and/or every edge scoring
  at least ``threshold``; ``method="greedy"``: grow from the logits, each time adding the best edge whose target is
  read by a node already in the circuit.
- :func:`prune_edges`: repeat until nothing changes: an edge survives only if its source has an input (the input
  node, or a node with an incoming edge) and its target is read by a node with an outgoing edge (or is the logits).
- :func:`head_importance`: ``I(l, h) = Σ |score|`` over the circuit's edges leaving head (l, h), normalised to sum
  to 1. :func:`ranked_heads` orders a head set by it.

Head sets (shared / emergent heads of two circuits) are compared with :func:`toolkit.core.units.compare_heads`,
which accepts a :class:`Circuit` directly.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from toolkit.core.checks import check_int
from toolkit.core.units import Head, as_heads
from toolkit.methods.eap.graph import EAPError, Graph
from toolkit.methods.eap.scores import Scores


@dataclass(frozen=True, eq=False)
class Circuit:
    """A set of edges (``edges``: ``[n_sources, n_targets]`` bool) of a :class:`Graph`."""

    edges: torch.Tensor
    graph: Graph

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def heads(self) -> frozenset[tuple[int, int]]:
        """``(layer, head)`` nodes with at least one outgoing edge in the circuit."""
        out = self.edges.any(1)
        return frozenset(h for s in out.nonzero().flatten().tolist() if (h := self.graph.source_head(s)))

    def edge_list(self) -> list[tuple[str, str]]:
        """``(source, target)`` names of the circuit's edges (``("a0.h1", "a1.h2<q>")``): the circuit in words, for
        a reader of the library; no study prints it, the tests read selections through it."""
        src, tgt = self.graph.source_names, self.graph.target_names
        return [(src[s], tgt[t]) for s, t in self.edges.nonzero().tolist()]

    @classmethod
    def full(cls, graph: Graph) -> Circuit:
        return cls(graph.valid_mask(), graph)

    @classmethod
    def empty(cls, graph: Graph) -> Circuit:
        return cls(torch.zeros(graph.n_sources, graph.n_targets, dtype=torch.bool), graph)

    def __repr__(self) -> str:
        return f"Circuit({self.n_edges} edges, {len(self.heads)} heads)"


def prune_edges(graph: Graph, edges: torch.Tensor) -> torch.Tensor:
    """Remove dead nodes' edges until nothing changes: an edge survives only if its source has an input (the input
    node, or a node with an incoming edge) and its target is read by a node with an outgoing edge (or is logits)."""
    e = edges.clone().bool()
    owners = [graph.target_owner(t) for t in range(graph.n_targets)]
    inputs = [graph.source_inputs(s) for s in range(graph.n_sources)]
    while True:
        before = int(e.sum())
        has_out = e.any(1)
        alive_t = torch.tensor([t == graph.logits_target or any(bool(has_out[s]) for s in owners[t])
                                for t in range(graph.n_targets)])
        e &= alive_t[None, :]
        has_in_t = e.any(0)
        alive_s = torch.tensor([s == 0 or any(bool(has_in_t[t]) for t in inputs[s]) for s in range(graph.n_sources)])
        e &= alive_s[:, None]
        if int(e.sum()) == before:
            return e


def select(scores: Scores, *, top_n: int | None = None, threshold: float | None = None, absolute: bool = True,
           method: str = "top", prune: bool = True) -> Circuit:
    """A circuit from scores.

    - ``method="top"``: the ``top_n`` best edges, and/or every edge whose score is at least ``threshold`` (τ);
    - ``method="greedy"``: grow from the logits, each time adding the best edge whose target is read by a node
      already in the circuit, until ``top_n`` edges;

    ranking by |score| (``absolute``) or by signed score; then dead nodes are pruned (``prune``).
    """
    g, key = scores.graph, (scores.values.abs() if absolute else scores.values)
    key = key.masked_fill(~scores.valid, -math.inf)
    if method not in ("top", "greedy"):
        raise EAPError(f"unknown selection method {method!r}; choose 'top' or 'greedy'")
    if top_n is None and threshold is None:
        raise EAPError("select needs top_n, threshold, or both")
    if top_n is not None:
        check_int(top_n, "top_n", minimum=0, error=EAPError)
    if threshold is not None and math.isnan(threshold):
        raise EAPError("threshold is NaN; pass a number (every edge scoring at least it is kept)")
    valid_values = scores.values[scores.valid]
    if bool(valid_values.isnan().any()):
        raise EAPError(f"{int(valid_values.isnan().sum())} edge scores are NaN; the attribution failed (a NaN in the "
                       "model's activations or metric): nothing can be selected from them")
    if valid_values.numel() and not bool(valid_values.ne(0).any()):
        raise EAPError("every edge scores exactly 0: the clean and corrupted runs do not differ at any edge (identical "
                       "inputs, or a metric that does not read them), so there is no circuit to select")
    chosen = torch.zeros_like(scores.valid)
    if method == "top":
        if top_n is not None:
            k = min(top_n, scores.n_edges)
            if k:
                idx = torch.topk(key.flatten(), k).indices
                chosen.view(-1)[idx] = True
            if threshold is not None:
                chosen &= key >= threshold
        else:
            chosen = key >= threshold
    else:
        if top_n is None:
            raise EAPError("greedy selection needs top_n")
        chosen = greedy(g, key, top_n, threshold)
    chosen &= scores.valid
    return Circuit(prune_edges(g, chosen) if prune else chosen, g)


def greedy(g: Graph, key: torch.Tensor, top_n: int, threshold: float | None) -> torch.Tensor:
    """Edges ``[n_sources, n_targets]`` grown from the logits: pop the best open edge (``key``, -inf = none), open
    its source's input targets, until ``top_n`` edges or the best left scores below ``threshold``."""
    chosen = torch.zeros(key.shape, dtype=torch.bool)
    heap: list[tuple[float, int, int]] = []
    opened: set[int] = set()
    k_np = key.tolist()

    def open_target(t: int) -> None:
        if t in opened:
            return
        opened.add(t)
        for s in range(g.n_sources):
            v = k_np[s][t]
            if v != -math.inf:
                heapq.heappush(heap, (-v, s, t))

    in_circuit: set[int] = set()
    open_target(g.logits_target)
    count = 0
    while heap and count < top_n:
        neg, s, t = heapq.heappop(heap)
        if threshold is not None and -neg < threshold:
            break
        chosen[s, t] = True
        count += 1
        if s not in in_circuit and s != 0:
            in_circuit.add(s)
            for tt in g.source_inputs(s):
                open_target(tt)
    return chosen


def head_importance(scores: Scores, circuit: Circuit) -> torch.Tensor:
    """``I(l, h) = Σ |score|`` over the circuit's edges leaving head (l, h), normalized to sum to 1: ``[L, H]``."""
    g = scores.graph
    if circuit.graph != g:
        raise EAPError(f"the circuit's graph {circuit.graph} is not the scores' graph {g}")
    per_source = (scores.values.abs() * circuit.edges).sum(1)
    out = torch.zeros(g.n_layers, g.n_heads, dtype=torch.float64)
    for layer in range(g.n_layers):
        s = g.head_source(layer, 0)
        out[layer] = per_source[s:s + g.n_heads]
    total = out.sum()
    return out / total if total > 0 else out



def ranked_heads(heads, importance: torch.Tensor) -> list[Head]:
    """``heads`` (pairs or a :class:`Circuit`) sorted by ``importance[layer, head]``, most important first."""
    return sorted(as_heads(heads), key=lambda lh: (-float(importance[lh[0], lh[1]]), lh))
