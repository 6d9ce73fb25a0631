"""A slow, independent float64 EAP / EAP-IG: what :mod:`toolkit.methods.eap` computes, without bridge or hooks.

An explicit forward of a Qwen2/Qwen3 HF model written from its weights alone, in which *every target has its own copy
of its input* (one per query head for q, and — ungrouped — one per query head for k and v as well), so the gradient
at each copy is the per-edge gradient, taken with ``torch.autograd.grad`` on an explicitly interpolated input. Rows
run one by one, without padding. ``tests/test_eap.py`` checks the fast path against it:

- :func:`reference_scores` — EAP (``alphas=[1.0]``) and EAP-IG (``alphas=[k/m for k < m]``) scores, grouped (as the
  graph) or per query head (to check that a grouped k/v score is the sum of its per-query-head scores);
- :func:`reference_patched_metric` — the metric with a set of edges patched to their corrupted values (faithfulness
  and exact scores).
"""

from __future__ import annotations

import math

import torch

from toolkit.methods.eap.graph import Graph
from toolkit.methods.eap.pairs import Pairs


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


class Reference:
    """Explicit forward of a Qwen2/Qwen3 HF model with per-target inputs, patchable per edge."""

    def __init__(self, hf, graph: Graph):
        self.hf, self.g = hf, graph
        cfg = hf.config
        self.eps = cfg.rms_norm_eps
        self.dh = graph.d_head
        theta = cfg.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.dh, 2, dtype=torch.float64) / self.dh)
        self.layers = hf.model.layers

    @staticmethod
    def _w(module):
        m = getattr(module, "original_component", module)
        return m.weight, getattr(m, "bias", None)

    def _lin(self, module, x, rows=None):
        w, b = self._w(module)
        if rows is not None:
            w = w[rows]
            b = None if b is None else b[rows]
        y = x @ w.T
        return y if b is None else y + b

    def run(self, emb, grouped=True, missing=None, corrupted_acts=None, target_inputs=None):
        """``emb`` [p, d] → (logits [p, V], source activations list). ``missing[s][t]``: take source s's corrupted
        activation (from ``corrupted_acts``) into target t. ``target_inputs`` (a dict) collects every target's input
        tensor, made a fresh leaf-like node per target so gradients can be taken there."""
        g, dh = self.g, self.dh
        p = emb.shape[0]
        pos = torch.arange(p, dtype=torch.float64)
        freqs = torch.outer(pos, self.inv_freq)
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        mask = torch.full((p, p), -math.inf, dtype=torch.float64).triu(1)
        acts = [emb]

        made: dict = {}

        def inp(key, t, n_src):
            if key in made:  # a grouped k/v input is one tensor shared by its query heads
                return made[key]
            parts = []
            for s in range(n_src):
                use_corr = missing is not None and missing[s, t]
                parts.append(corrupted_acts[s] if use_corr else acts[s])
            x = torch.stack(parts).sum(0)
            if target_inputs is not None:
                x = x.clone().requires_grad_(True) if not x.requires_grad else x * 1.0
                target_inputs[key] = x
            made[key] = x
            return x

        for layer in range(g.n_layers):
            blk = self.layers[layer]
            attn = blk.self_attn
            ln1_w = self._w(blk.input_layernorm)[0]
            n_src = g.sources_before(layer)
            qn = getattr(attn, "q_norm", None)
            kn = getattr(attn, "k_norm", None)
            outs = []
            for h in range(g.n_heads):
                grp = h // g.group_size
                xq = inp(("q", layer, h), g.q_target(layer, h), n_src)
                if grouped:
                    xk = inp(("k", layer, grp), g.k_target(layer, grp), n_src)
                    xv = inp(("v", layer, grp), g.v_target(layer, grp), n_src)
                else:  # one copy per query head of the group's k/v input
                    xk = inp(("k", layer, h), g.k_target(layer, grp), n_src)
                    xv = inp(("v", layer, h), g.v_target(layer, grp), n_src)
                rows_q = slice(h * dh, (h + 1) * dh)
                rows_kv = slice(grp * dh, (grp + 1) * dh)
                q = self._lin(attn.q_proj, _rms(xq, ln1_w, self.eps), rows_q)
                k = self._lin(attn.k_proj, _rms(xk, ln1_w, self.eps), rows_kv)
                v = self._lin(attn.v_proj, _rms(xv, ln1_w, self.eps), rows_kv)
                if qn is not None:
                    q = _rms(q, self._w(qn)[0], self.eps)
                    k = _rms(k, self._w(kn)[0], self.eps)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
                a = torch.softmax(q @ k.T / math.sqrt(dh) + mask, -1)
                z = a @ v
                wo = self._w(attn.o_proj)[0][:, h * dh:(h + 1) * dh]
                outs.append(z @ wo.T)
            acts.extend(outs)
            xm = inp(("m", layer), g.mlp_target(layer), n_src + g.n_heads)
            mlp = blk.mlp
            hm = _rms(xm, self._w(blk.post_attention_layernorm)[0], self.eps)
            y = self._lin(mlp.down_proj, torch.nn.functional.silu(self._lin(mlp.gate_proj, hm))
                          * self._lin(mlp.up_proj, hm))
            acts.append(y)
        xf = inp(("logits",), g.logits_target, g.n_sources)
        final = _rms(xf, self._w(self.hf.model.norm)[0], self.eps)
        w, b = self._w(self.hf.lm_head)
        logits = final @ w.T + (0 if b is None else b)
        return logits, acts

    def embed(self, ids):
        return self._w(self.hf.model.embed_tokens)[0][ids]


def reference_metric(logits, metric, clean_logits, cl, xl):
    if metric == "kl":
        ref, lp = torch.log_softmax(clean_logits, -1), torch.log_softmax(logits, -1)
        return (ref.exp() * (ref - lp)).sum()
    if metric == "logit_diff":
        return logits[cl] - logits[xl]
    p = torch.softmax(logits, -1)
    return p[cl] - p[xl]


def _target_index(g, key, grouped):
    kind = key[0]
    if kind == "q":
        return g.q_target(key[1], key[2])
    if kind in ("k", "v"):
        grp = key[2] if grouped else key[2] // g.group_size
        return (g.k_target if kind == "k" else g.v_target)(key[1], grp)
    if kind == "m":
        return g.mlp_target(key[1])
    return g.logits_target


def reference_scores(ref: Reference, pairs: Pairs, metric: str, alphas, grouped=True):
    """``[n_sources, n_targets]`` scores (grouped) or, ungrouped, a dict {(s, key): score} with per-query-head k/v."""
    g = ref.g
    total = torch.zeros(g.n_sources, g.n_targets, dtype=torch.float64)
    per_key: dict = {}
    for i in range(len(pairs)):
        n = int(pairs.lengths[i])
        pos = int(pairs.positions[i])
        cl, xl = int(pairs.clean_label[i]), int(pairs.corrupted_label[i])
        e_c, e_x = ref.embed(pairs.clean_ids[i, :n]), ref.embed(pairs.corrupted_ids[i, :n])
        with torch.no_grad():
            lc, acts_c = ref.run(e_c)
            _, acts_x = ref.run(e_x)
        deltas = [ax - ac for ax, ac in zip(acts_x, acts_c, strict=True)]
        for alpha in alphas:
            tin: dict = {}
            logits, _ = ref.run(e_x + alpha * (e_c - e_x), grouped=grouped, target_inputs=tin)
            m = reference_metric(logits[pos], metric, lc[pos], cl, xl)
            keys = list(tin)
            grads = torch.autograd.grad(m, [tin[k] for k in keys], allow_unused=True)
            for key, grad in zip(keys, grads, strict=True):
                if grad is None:
                    continue
                t = _target_index(g, key, grouped)
                for s in range(g.n_sources):
                    if g.valid_mask()[s, t]:
                        val = float((deltas[s] * grad).sum()) / len(alphas) / len(pairs)
                        total[s, t] += val
                        per_key[(s, key)] = per_key.get((s, key), 0.0) + val
    return total if grouped else per_key


def reference_patched_metric(ref: Reference, pairs: Pairs, missing, metric: str) -> float:
    out = 0.0
    with torch.no_grad():
        for i in range(len(pairs)):
            n, pos = int(pairs.lengths[i]), int(pairs.positions[i])
            e_c, e_x = ref.embed(pairs.clean_ids[i, :n]), ref.embed(pairs.corrupted_ids[i, :n])
            lc, _ = ref.run(e_c)
            _, acts_x = ref.run(e_x)
            logits, _ = ref.run(e_c, missing=missing, corrupted_acts=acts_x)
            out += float(reference_metric(logits[pos], metric, lc[pos], int(pairs.clean_label[i]),
                                     int(pairs.corrupted_label[i])))
    return out / len(pairs)


def source_activations(ref: Reference, pairs: Pairs, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pair ``i``'s source activations ``[p, d]`` on its clean and its corrupted input, one per source in graph order
    (the pieces of the EAP formula that the exercise notebooks hand to the learner)."""
    n = int(pairs.lengths[i])
    with torch.no_grad():
        _, clean = ref.run(ref.embed(pairs.clean_ids[i, :n]))
        _, corrupted = ref.run(ref.embed(pairs.corrupted_ids[i, :n]))
    return clean, corrupted


def target_gradients(ref: Reference, pairs: Pairs, i: int, metric: str, alpha: float) -> dict[int, torch.Tensor]:
    """``{target index: [p, d]}``: the gradient of pair ``i``'s metric at every target's input (grouped k/v), on the
    embeddings interpolated from corrupted (α = 0) to clean (α = 1), as one term of :func:`reference_scores`."""
    n, pos = int(pairs.lengths[i]), int(pairs.positions[i])
    e_c, e_x = ref.embed(pairs.clean_ids[i, :n]), ref.embed(pairs.corrupted_ids[i, :n])
    with torch.no_grad():
        lc, _ = ref.run(e_c)
    tin: dict = {}
    logits, _ = ref.run(e_x + alpha * (e_c - e_x), target_inputs=tin)
    m = reference_metric(logits[pos], metric, lc[pos], int(pairs.clean_label[i]), int(pairs.corrupted_label[i]))
    keys = list(tin)
    grads = torch.autograd.grad(m, [tin[k] for k in keys], allow_unused=True)
    return {_target_index(ref.g, key, True): torch.zeros_like(tin[key]) if grad is None else grad
            for key, grad in zip(keys, grads, strict=True)}
