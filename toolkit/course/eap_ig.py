"""Lesson 03 (EAP and EAP-IG): the data and the checks of ``notebooks/exercises/03_eap_ig.ipynb``.

The checks run on the organism in float64 with clean/corrupted pairs from :func:`toolkit.methods.eap.make_pairs`
and the ``logit_diff`` metric, and compare the learner's pieces with the slow float64 reference
(:mod:`toolkit.reference.eap`) and the fast path (:mod:`toolkit.methods.eap`):

1. :func:`check_edge_score` — Σ_pos,width (a_s(corrupted) − a_s(clean)) · ∂m/∂(input of t), averaged over pairs,
   against ``reference_scores(..., alphas=[1.0])`` (plain EAP: the gradient on the clean input);
2. :func:`check_integrated_gradient` — the mean gradient over α = k/m, k = 0…m−1 (a left Riemann sum), scored with
   the reference's formula, against ``reference_scores(..., alphas=[k/m])``;
3. :func:`check_group_kv` — per-query-head k/v scores summed per KV group, against the grouped reference;
4. :func:`check_faithfulness` — metric, clean, corrupted and recovered of a circuit from a patched-metric function,
   against :func:`toolkit.methods.eap.faithfulness` (full graph, empty graph, a top-n circuit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from toolkit.core.models import LoadedModel, load
from toolkit.course.checks import CheckResult, check
from toolkit.methods import eap
from toolkit.organism import tasks
from toolkit.reference.eap import (
    Reference,
    reference_patched_metric,
    reference_scores,
    source_activations,
    target_gradients,
)

METRIC = "logit_diff"
EDGES = ("input→a0.h0<q>", "a0.h1→a1.kv0<k>", "a1.h2→a2.kv1<v>", "m1→m2", "a2.h3→a3.h1<q>", "a3.h0→logits",
         "m3→logits")  # one of each kind of target; names as Graph.source_names / target_names


@dataclass
class Data:
    """What the checks need: the model (float64), the pairs, the graph, the reference and a cache of its gradients."""

    model: LoadedModel
    pairs: eap.Pairs
    graph: eap.Graph
    reference: Reference
    steps: int
    _gradients: dict = field(default_factory=dict, repr=False)

    def edge(self, name: str) -> tuple[int, int]:
        """``"a0.h1→a1.kv0<k>"`` → (source index, target index)."""
        source, target = name.split("→")
        return self.graph.source_index(source), self.graph.target_index(target)

    def activations(self, source: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Source ``source``'s activations ``[p, d]`` on each pair's clean and corrupted input."""
        pieces = [source_activations(self.reference, self.pairs, i) for i in range(len(self.pairs))]
        return [c[source] for c, _ in pieces], [x[source] for _, x in pieces]

    def gradient(self, i: int, target: int, alpha: float) -> torch.Tensor:
        """``[p, d]``: the metric's gradient at target ``target``'s input, pair ``i``, embeddings at ``alpha``."""
        key = (i, float(alpha))
        if key not in self._gradients:
            self._gradients[key] = target_gradients(self.reference, self.pairs, i, METRIC, float(alpha))
        return self._gradients[key][target]


def setup(n_pairs: int = 4, steps: int = 4, seed: int = 1) -> Data:
    """The organism in float64 and ``n_pairs`` clean/corrupted pairs of its own sums (a few seconds on a CPU)."""
    model = load("organism", dtype=torch.float64)
    pairs = eap.make_pairs(model, tasks.held_out("arithmetic", n_pairs, seed=seed), max_new_tokens=32)
    graph = eap.Graph.from_bridge(model.bridge)
    return Data(model, pairs, graph, Reference(model.hf, graph), steps)


def _score(clean: list[torch.Tensor], corrupted: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """The EAP formula (the toolkit's): mean over pairs of Σ (corrupted − clean) · gradient."""
    return sum(((x - c) * g).sum() for c, x, g in zip(clean, corrupted, grads, strict=True)) / len(clean)


def check_edge_score(edge_score: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``edge_score(clean, corrupted, grads)`` (lists over pairs of ``[p, d]``) → a 0-d tensor, on :data:`EDGES`,
    against the float64 reference's plain-EAP scores."""
    def learner(names):
        out = {}
        for name in names:
            s, t = data.edge(name)
            clean, corrupted = data.activations(s)
            out[name] = edge_score(clean, corrupted, [data.gradient(i, t, 1.0) for i in range(len(clean))])
        return out

    def reference(names):
        scores = reference_scores(data.reference, data.pairs, METRIC, [1.0])
        return {name: scores[data.edge(name)] for name in names}

    return check(learner, reference, EDGES, name="edge_score", atol=1e-8, rtol=1e-6, verbose=verbose)


def check_integrated_gradient(integrated_gradient: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``integrated_gradient(gradient_at, steps)`` → ``[p, d]`` (``gradient_at(alpha)`` gives the gradient on the
    embeddings interpolated at α), scored on :data:`EDGES` against the reference's EAP-IG scores."""
    def learner(names):
        out = {}
        for name in names:
            s, t = data.edge(name)
            clean, corrupted = data.activations(s)
            grads = [integrated_gradient(lambda a, i=i, t=t: data.gradient(i, t, a), data.steps)
                     for i in range(len(clean))]
            for got, want in zip(grads, clean, strict=True):
                if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                    shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                    raise ValueError(f"integrated_gradient returned {shape}, expected a tensor {tuple(want.shape)}")
            out[name] = _score(clean, corrupted, grads)
        return out

    def reference(names):
        scores = reference_scores(data.reference, data.pairs, METRIC, [k / data.steps for k in range(data.steps)])
        return {name: scores[data.edge(name)] for name in names}

    return check(learner, reference, EDGES, name="integrated_gradient", atol=1e-8, rtol=1e-6, verbose=verbose)


def per_query_head_kv(data: Data) -> dict[str, torch.Tensor]:
    """``{"a{L} k": [sources before L, n_heads], "a{L} v": ...}``: EAP-IG scores of the edges into each query head's
    own copy of the k or v input (the ungrouped reference)."""
    g = data.graph
    per_key = reference_scores(data.reference, data.pairs, METRIC, [k / data.steps for k in range(data.steps)],
                               grouped=False)
    return {f"a{layer} {kind}": torch.tensor([[per_key.get((s, (kind, layer, h)), 0.0) for h in range(g.n_heads)]
                                             for s in range(g.sources_before(layer))], dtype=torch.float64)
            for layer in range(g.n_layers) for kind in ("k", "v")}


def check_group_kv(group_kv: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``group_kv(per_query_head [S, n_heads], group_size)`` → ``[S, n_kv_heads]``, on every layer's k and v edges,
    against the grouped reference's k/v columns."""
    g = data.graph
    per_head = per_query_head_kv(data)

    def learner(_):
        return {key: group_kv(value, g.group_size) for key, value in per_head.items()}

    def reference(_):
        scores = reference_scores(data.reference, data.pairs, METRIC, [k / data.steps for k in range(data.steps)])
        out = {}
        for layer in range(g.n_layers):
            rows = slice(0, g.sources_before(layer))
            for kind, target in (("k", g.k_target), ("v", g.v_target)):
                out[f"a{layer} {kind}"] = scores[rows, [target(layer, grp) for grp in range(g.n_kv_heads)]]
        return out

    return check(learner, reference, None, name="group_kv", atol=1e-8, rtol=1e-6, verbose=verbose)


def circuits(data: Data, top_n: int = 40) -> dict[str, eap.Circuit]:
    """The circuits :func:`check_faithfulness` tries: the full graph, the empty graph, the top-``top_n`` EAP-IG
    edges (fast path, absolute scores, pruned)."""
    scores = eap.attribute(data.model, data.pairs, method="eap-ig", steps=data.steps, metric=METRIC,
                           show_progress=False)
    return {"full": eap.Circuit.full(data.graph), "empty": eap.Circuit.empty(data.graph),
            f"top {top_n}": eap.select(scores, top_n=top_n)}


def check_faithfulness(faithfulness: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``faithfulness(patched_metric, valid, edges)`` → ``{"metric", "clean", "corrupted", "recovered"}``, where
    ``patched_metric(missing)`` is the metric with the edges of the bool mask ``missing`` [S, T] patched to their
    corrupted values (the float64 reference); against :func:`toolkit.methods.eap.faithfulness` on :func:`circuits`."""
    valid = data.graph.valid_mask()
    chosen = circuits(data)

    def patched_metric(missing: torch.Tensor) -> float:
        return reference_patched_metric(data.reference, data.pairs, missing, METRIC)

    def learner(_):
        return {name: faithfulness(patched_metric, valid, c.edges) for name, c in chosen.items()}

    def reference(_):
        keys = ("metric", "clean", "corrupted", "recovered")
        return {name: {k: v for k, v in eap.faithfulness(data.model, data.pairs, c, metric=METRIC).items()
                       if k in keys} for name, c in chosen.items()}

    return check(learner, reference, None, name="faithfulness", atol=1e-5, rtol=1e-4, verbose=verbose)
