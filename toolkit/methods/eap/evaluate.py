"""Stage 5 of EAP / EAP-IG: run the model with edges patched — faithfulness of a circuit, its curve over circuit
sizes, and exact per-edge scores (the ground truth :func:`~toolkit.methods.eap.attribute` approximates).

Patching goes through the bridge's split inputs (``use_split_qkv_input``, ``hook_mlp_in``): target t's input becomes
its input in the patched run plus ``Σ_{s missing} (a_s(corrupted) − a_s(patched run))``, so effects propagate
downstream as in the patched model.

- :func:`faithfulness`: every edge *outside* the circuit patched to its corrupted value; ``recovered = (metric −
  corrupted) / (clean − corrupted)`` (1 = the circuit does all the model does; for KL the clean value is 0).
- :func:`exact_scores`: per valid edge, ``metric(only that edge corrupted) − metric(clean)``, averaged over rows;
  edges are batched by repeating the pair batch, one edge per copy (one forward per edge: small graphs only).

The tests check both against the explicit float64 reference (:mod:`toolkit.reference.eap`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from toolkit.core.models import as_loaded
from toolkit.core.progress import progress
from toolkit.methods.eap.circuit import Circuit, select
from toolkit.methods.eap.graph import EAPError
from toolkit.methods.eap.memory import EXACT_ROWS
from toolkit.methods.eap.model import _Frozen, _logits_at, _metric, _Model, _prepare
from toolkit.methods.eap.pairs import Pairs
from toolkit.methods.eap.scores import Scores

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from toolkit.core.models import LoadedModel


@torch.no_grad()
def _record_sources(model: _Model, ids: torch.Tensor, positions: torch.Tensor):
    """One no-grad forward: token embeddings ``[b,p,d]``, ``z`` per layer, MLP outputs per layer, logits at
    positions."""
    g = model.graph
    store: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        store[hook.name] = act

    names = ["hook_embed"] + [f"blocks.{i}.attn.hook_z" for i in range(g.n_layers)] + \
        [f"blocks.{i}.hook_mlp_out" for i in range(g.n_layers)]
    with model.bridge.hooks(fwd_hooks=[(n, keep) for n in names]):
        logits = _logits_at(model, ids, positions)
    emb = store["embed.hook_out"]
    z = [store[f"blocks.{i}.attn.o.hook_in"].reshape(*ids.shape, g.n_heads, g.d_head) for i in range(g.n_layers)]
    mlp = [store[f"blocks.{i}.mlp.hook_out"] for i in range(g.n_layers)]
    return emb, z, mlp, logits



_SPLIT_FLAGS = ("use_split_qkv_input", "use_hook_mlp_in", "use_attn_result")


class _SplitInputs:
    """Turn on the bridge's per-head q/k/v inputs and ``hook_mlp_in`` (required *before* hooks are added)."""

    def __init__(self, bridge: TransformerBridge):
        self.bridge = bridge

    def __enter__(self):
        cfg = self.bridge.cfg
        self.old = {f: bool(getattr(cfg, f, False)) for f in _SPLIT_FLAGS}
        self.old_attn_in = bool(getattr(cfg, "use_attn_in", False))
        if self.old_attn_in:
            self.bridge.set_use_attn_in(False)
        self.bridge.set_use_split_qkv_input(True)
        self.bridge.set_use_hook_mlp_in(True)

    def __exit__(self, *exc):
        self.bridge.set_use_split_qkv_input(self.old["use_split_qkv_input"])
        self.bridge.set_use_hook_mlp_in(self.old["use_hook_mlp_in"])
        if self.old_attn_in:
            self.bridge.set_use_attn_in(True)


@torch.no_grad()
def _patched_logits(model: _Model, ids_c, pos, corrupted, missing: torch.Tensor) -> torch.Tensor:
    """Logits at ``pos`` of the clean run in which every edge marked in ``missing`` carries its corrupted value.

    ``missing`` is ``[n_sources, n_targets]`` (one pattern for the batch) or ``[b, n_sources, n_targets]`` (one per
    row). Target t's input becomes its clean-run input plus ``Σ_{s missing} (a_s(corrupted) − a_s(this run))``,
    where "this run" is the patched run itself (so effects propagate, as in faithfulness evaluation).
    Needs the bridge's split inputs (:class:`_SplitInputs`)."""
    g = model.graph
    emb_x, z_x, mlp_x, _ = corrupted
    b, p, d = emb_x.shape
    diffs = torch.zeros(g.n_sources, b, p, d, dtype=model.dtype, device=emb_x.device)  # a_corr − a_run
    miss = missing.to(model.device, model.dtype)
    per_row = miss.dim() == 3

    def add(act: torch.Tensor, n_src: int, t0: int, t1: int) -> torch.Tensor:
        """act [b, p, T, d] (or [b, p, d] for one target) += Σ_s diffs[s] * miss[s, t]."""
        m = miss[..., :n_src, t0:t1]
        if per_row:
            delta = torch.einsum("sbpd,bst->bptd", diffs[:n_src], m)
        else:
            delta = torch.einsum("sbpd,st->bptd", diffs[:n_src], m)
        if act.dim() == 3:
            return act + delta[:, :, 0]
        return act + delta

    def embed(act, hook):
        diffs[0] = emb_x - act

    hooks = [("hook_embed", embed)]
    for layer in range(g.n_layers):
        n_attn = g.sources_before(layer)
        qs, ks, vs = g.q_target(layer, 0), g.k_target(layer, 0), g.v_target(layer, 0)

        def q_in(act, hook, n=n_attn, t=qs):
            return add(act, n, t, t + g.n_heads)

        def k_in(act, hook, n=n_attn, t=ks):
            return add(act, n, t, t + g.n_kv_heads)

        def v_in(act, hook, n=n_attn, t=vs):
            return add(act, n, t, t + g.n_kv_heads)

        def z_hook(act, hook, layer=layer):
            s = g.head_source(layer, 0)
            z = act.reshape(b, p, g.n_heads, g.d_head)
            diffs[s:s + g.n_heads] = model.head_results(layer, z_x[layer] - z)

        def mlp_in(act, hook, n=n_attn + g.n_heads, t=qs + g.per_layer_targets - 1):
            return add(act, n, t, t + 1)

        def mlp_out(act, hook, layer=layer):
            diffs[g.mlp_source(layer)] = mlp_x[layer] - act

        hooks += [(f"blocks.{layer}.attn.hook_q_input", q_in), (f"blocks.{layer}.attn.hook_k_input", k_in),
                  (f"blocks.{layer}.attn.hook_v_input", v_in), (f"blocks.{layer}.attn.hook_z", z_hook),
                  (f"blocks.{layer}.hook_mlp_in", mlp_in), (f"blocks.{layer}.hook_mlp_out", mlp_out)]

    def final(act, hook):
        return add(act, g.n_sources, g.logits_target, g.logits_target + 1)

    hooks.append(("ln_final.hook_in", final))
    with model.bridge.hooks(fwd_hooks=hooks):
        return _logits_at(model, ids_c, pos)


def _batch_refs(model: _Model, batch: Pairs, metric: str):
    ids_c = batch.clean_ids.to(model.device)
    ids_x = batch.corrupted_ids.to(model.device)
    pos = batch.positions.to(model.device)
    labels = (batch.clean_label.to(model.device), batch.corrupted_label.to(model.device))
    clean = _record_sources(model, ids_c, pos)
    corrupted = _record_sources(model, ids_x, pos)
    clean_logp = torch.log_softmax(clean[3].to(model.acc_dtype), -1)
    return ids_c, pos, labels, clean, corrupted, clean_logp


def exact_scores(loaded: LoadedModel, pairs: Pairs, metric: str, batch_size: int, show_progress: bool) -> Scores:
    """Ground truth: for each valid edge, metric(only that edge corrupted) − metric(clean), averaged over rows.
    Edges are batched by repeating the pair batch, one edge per copy."""
    model = _prepare(loaded, pairs, metric, batch_size, "exact")
    g = model.graph
    valid = g.valid_mask()
    edges = valid.nonzero().tolist()
    scores = torch.zeros(g.n_sources, g.n_targets, dtype=torch.float64)
    batches = list(pairs.batches(batch_size))
    per_pass = max(1, EXACT_ROWS // min(batch_size, len(pairs)))  # edges per forward pass (about 256 rows)
    bar = progress(total=len(batches) * math.ceil(len(edges) / per_pass), desc=f"exact ({metric})",
                   disable=not show_progress)
    with _Frozen(model.hf), _SplitInputs(model.bridge), torch.no_grad():
        for batch in batches:
            ids_c, pos, labels, clean, corrupted, clean_logp = _batch_refs(model, batch, metric)
            base = _metric(clean[3], metric, clean_logp, *labels)
            b = len(ids_c)
            for start in range(0, len(edges), per_pass):
                chunk = edges[start:start + per_pass]
                e = len(chunk)
                miss = torch.zeros(e, b, g.n_sources, g.n_targets, dtype=torch.bool)
                for j, (s, t) in enumerate(chunk):
                    miss[j, :, s, t] = True
                def rep(x, e=e):
                    return x.repeat(e, *([1] * (x.dim() - 1)))

                corr_rep = (rep(corrupted[0]), [rep(z) for z in corrupted[1]], [rep(m) for m in corrupted[2]], None)
                logits = _patched_logits(model, rep(ids_c), rep(pos), corr_rep, miss.view(e * b, *miss.shape[2:]))
                vals = _metric(logits, metric, rep(clean_logp), rep(labels[0]), rep(labels[1]))
                vals = (vals.view(e, b) - base).sum(1).double().cpu()
                for j, (s, t) in enumerate(chunk):
                    scores[s, t] += vals[j]
                bar.update(1)
    bar.close()
    scores /= len(pairs)
    return Scores(scores, g, {"method": "exact", "steps": 0, "metric": metric, "n_examples": len(pairs),
                              "model": getattr(loaded, "spec", "")})



def _metric_values(loaded: LoadedModel, pairs: Pairs, circuits: Sequence[Circuit], metric: str,
                   batch_size: int) -> dict:
    model = _prepare(loaded, pairs, metric, batch_size, "faithfulness")
    g = model.graph
    for c in circuits:
        if c.graph != g:
            raise EAPError(f"circuit graph {c.graph} does not match the model's graph {g}")
    sums = {"clean": 0.0, "corrupted": 0.0, "circuits": [0.0] * len(circuits)}
    valid = g.valid_mask()
    with _Frozen(model.hf), _SplitInputs(model.bridge), torch.no_grad():
        for batch in pairs.batches(batch_size):
            ids_c, pos, labels, clean, corrupted, clean_logp = _batch_refs(model, batch, metric)
            sums["clean"] += float(_metric(clean[3], metric, clean_logp, *labels).sum())
            sums["corrupted"] += float(_metric(corrupted[3], metric, clean_logp, *labels).sum())
            for i, c in enumerate(circuits):
                logits = _patched_logits(model, ids_c, pos, corrupted, valid & ~c.edges)
                sums["circuits"][i] += float(_metric(logits, metric, clean_logp, *labels).sum())
    n = len(pairs)
    return {"clean": sums["clean"] / n, "corrupted": sums["corrupted"] / n,
            "circuits": [v / n for v in sums["circuits"]]}


def _recovered(value: float, clean: float, corrupted: float) -> float:
    """``(value − corrupted) / (clean − corrupted)``; NaN, with a warning saying why, when the two are equal."""
    span = clean - corrupted
    if abs(span) > 1e-12:
        return (value - corrupted) / span
    warnings.warn(f"the clean and corrupted inputs give the same metric ({clean:.3g}): the pairs do not change the "
                  "model's output, so the share a circuit recovers is undefined (NaN); use pairs whose answers differ",
                  stacklevel=3)
    return float("nan")


def faithfulness(loaded: LoadedModel | str, pairs: Pairs, circuit: Circuit, *, metric: str = "kl",
                 batch_size: int = 8) -> dict:
    """Run the model with every edge outside ``circuit`` patched to its corrupted value and report the metric.

    Returns ``{"metric", "clean", "corrupted", "recovered", "n_edges"}``: the circuit's metric, the clean model's,
    the corrupted input's (= the empty circuit's), and ``(metric − corrupted) / (clean − corrupted)`` (1 = the
    circuit does all the model does; for KL the clean value is 0).
    """
    vals = _metric_values(as_loaded(loaded, "eap.faithfulness: loaded"), pairs, [circuit], metric, batch_size)
    value = vals["circuits"][0]
    return {"metric": value, "clean": vals["clean"], "corrupted": vals["corrupted"],
            "recovered": _recovered(value, vals["clean"], vals["corrupted"]), "n_edges": circuit.n_edges,
            "metric_name": metric}


def faithfulness_curve(loaded: LoadedModel | str, pairs: Pairs, scores: Scores, n_edges: Sequence[int], *,
                       metric: str = "kl", method: str = "top", absolute: bool = True, prune: bool = True,
                       batch_size: int = 8) -> dict:
    """Faithfulness of the circuits selected at each size in ``n_edges``: ``{"requested", "n_edges", "metric",
    "recovered", "clean", "corrupted"}`` (lists aligned with ``n_edges``)."""
    loaded = as_loaded(loaded, "eap.faithfulness_curve: loaded")
    if isinstance(n_edges, (str, bytes)) or not len(n_edges):
        raise EAPError(f"n_edges must be a non-empty list of circuit sizes, got {n_edges!r}")
    circuits = [select(scores, top_n=int(n), absolute=absolute, method=method, prune=prune) for n in n_edges]
    vals = _metric_values(loaded, pairs, circuits, metric, batch_size)
    return {"requested": [int(n) for n in n_edges], "n_edges": [c.n_edges for c in circuits],
            "metric": vals["circuits"], "recovered": [_recovered(v, vals["clean"], vals["corrupted"])
                                                      for v in vals["circuits"]],
            "clean": vals["clean"], "corrupted": vals["corrupted"], "metric_name": metric}


def edges_for_recovery(curve: Mapping[str, list], level: float = 0.8) -> int | None:
    """The smallest circuit size (edges) in a faithfulness curve recovering at least ``level``; ``None`` if none."""
    if not math.isfinite(level):
        raise EAPError(f"level must be a finite fraction of the clean metric (e.g. 0.8), got {level}")
    for n, r in zip(curve["n_edges"], curve["recovered"]):
        if r is not None and math.isfinite(r) and r >= level:
            return int(n)
    return None
