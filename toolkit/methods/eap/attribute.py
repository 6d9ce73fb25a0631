"""Stage 3 of EAP / EAP-IG: edge scores (:func:`attribute`, :class:`Scores`) and the fast gradient path.

``score(s → t) = Σ_{examples, positions, width} (a_s(corrupted) − a_s(clean)) · ḡ_t / N``, where ``ḡ_t`` is the
gradient of the metric with respect to target t's input and N the number of examples.

- ``method="eap"``: ``ḡ_t`` is the gradient on the clean input.
- ``method="eap-ig"``: ``ḡ_t`` is the mean of the gradients on m inputs whose *token embeddings* are interpolated
  between corrupted and clean: ``e_k = e_corr + (k/m)(e_clean − e_corr)`` for **k = 0 … m−1** (left Riemann sum, as
  in the current hannamw/EAP-IG; older versions used k = 1 … m). k = 0 is the corrupted input itself; the clean end
  k = m is left out, which matters for the KL metric: its gradient is exactly zero at the clean input, so plain EAP
  with ``metric="kl"`` gives all-zero scores (use logit or probability difference for plain EAP).
- ``method="exact"``: the ground truth for small graphs: for each edge, the metric with only that edge patched to
  its corrupted value, minus the clean metric (one forward pass per edge; :mod:`toolkit.methods.eap.evaluate`).

Metrics, read at ``Pairs.positions`` (one position per row; rows are right-padded so positions are exact): ``kl`` =
KL(p_clean ‖ p), ``logit_diff`` = logit[clean label] − logit[corrupted label], ``prob_diff`` likewise with
probabilities. Each is summed over examples in a batch; scores are divided by the number of examples.

Fast path: no per-head result tensor is ever built during the gradient passes, parameters get no gradients, and
logits are computed only at the metric positions. Source differences ``Δa_s`` are computed once per batch, from one
no-grad forward of the clean input and the k = 0 pass (the corrupted input; for plain EAP the other way round). Per
IG step one forward+backward gives gradients at the q/k/v projection outputs, the MLP input and the final norm's
input; the gradient at each target's pre-norm input follows in closed form (per head ``W_Q[h]ᵀ g`` through the
RMSNorm's backward, ``r·w⊙dy − x·r³·(x·w⊙dy)/d``), and is contracted with ``Δa`` at once (per head, ``Δa`` is
``Δz_h W_O[h]``, built once per batch), so memory holds ``Δa`` plus one layer's target gradients. Supported: RMSNorm
decoders with separate q/k/v projections (Qwen2, Qwen3). The bridge computes attention softmax in float32, so even a
float64 model agrees with the float64 reference (:mod:`toolkit.reference.eap`) to about 1e-7.
See ``docs/methods.md`` ("EAP-IG" section).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from toolkit.core.checks import check_int
from toolkit.core.models import as_loaded
from toolkit.core.progress import progress
from toolkit.methods.eap.evaluate import exact_scores
from toolkit.methods.eap.graph import METHODS, EAPError
from toolkit.methods.eap.model import _Frozen, _logits_at, _metric, _Model, _prepare
from toolkit.methods.eap.pairs import Pairs
from toolkit.methods.eap.scores import Scores

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel


class _FastPath:
    """The gradient passes of EAP / EAP-IG with one set of hooks for a whole :func:`attribute` call.

    Per batch, one no-grad forward records the *other* end of the path (the clean input for EAP-IG, whose k = 0
    pass is the corrupted input; the corrupted input for EAP, whose one pass is the clean input): token embeddings,
    each layer's ``z`` and MLP output. Then each pass (mode ``"grad"``) replaces the token embeddings by the
    interpolated ones and keeps the tensors whose gradients are needed (q/k/v projection outputs, the MLP input, the
    final norm's input) and the norms' inputs; its first pass also yields Δa."""

    def __init__(self, model: _Model):
        self.model, g = model, model.graph
        self.mode, self.embeds, self.store = "record", None, {}
        acc = model.acc_dtype
        # q/k/v weights per head, stacked, with ln1's weight folded in: [H + 2 H_kv, dh, d]
        self.w_qkv = [torch.cat([model.w_q[i], model.w_k[i], model.w_v[i]], 0).to(acc) * model.ln1[i][0].to(acc)
                      for i in range(g.n_layers)]
        names = ["hook_embed"]
        for i in range(g.n_layers):
            names += [f"blocks.{i}.ln1.hook_in", f"blocks.{i}.attn.q.hook_out", f"blocks.{i}.attn.k.hook_out",
                      f"blocks.{i}.attn.v.hook_out", f"blocks.{i}.attn.hook_z", f"blocks.{i}.ln2.hook_in",
                      f"blocks.{i}.mlp.hook_in", f"blocks.{i}.hook_mlp_out"]
        names.append("ln_final.hook_in")
        self.hooks = [(n, self._keep) for n in names]
        self.wanted = [f"blocks.{i}.{h}" for i in range(g.n_layers) for h in ("attn.q.hook_out", "attn.k.hook_out",
                                                                               "attn.v.hook_out", "mlp.hook_in")]
        self.wanted.append("ln_final.hook_in")

    def _keep(self, act, hook):
        name = hook.name
        if name == "embed.hook_out" and self.mode == "grad":
            return self.embeds
        self.store[name] = act
        return act  # returned so that this tensor (not a converted copy of it) is what flows on

    @torch.no_grad()
    def embed(self, ids):
        """Token embeddings of ``ids`` (no grad)."""
        self.mode = "record"
        return self.model.hf.get_input_embeddings()(ids)

    @torch.no_grad()
    def record(self, ids, pos):
        """One no-grad forward: ``(embeddings, [z per layer], [MLP output per layer], logits at pos)``."""
        self.mode, self.store = "record", {}
        logits = _logits_at(self.model, ids, pos)
        acts = self._acts(len(ids), detach=False)
        self.store = {}
        return (*acts, logits)

    def _acts(self, b: int, detach: bool):
        g, st = self.model.graph, self.store
        emb = st["embed.hook_out"] if "embed.hook_out" in st else self.embeds
        p = emb.shape[1]
        z = [st[f"blocks.{i}.attn.o.hook_in"].reshape(b, p, g.n_heads, g.d_head) for i in range(g.n_layers)]
        mlp = [st[f"blocks.{i}.mlp.hook_out"] for i in range(g.n_layers)]
        if detach:
            emb, z, mlp = emb.detach(), [t.detach() for t in z], [t.detach() for t in mlp]
        return emb, z, mlp

    @torch.no_grad()
    def deltas(self, clean, corrupted) -> torch.Tensor:
        """``Δa = a(corrupted) − a(clean)`` for every source: ``[n_sources, b*p*d]`` (accumulation dtype)."""
        model, g = self.model, self.model.graph
        (emb_c, z_c, mlp_c), (emb_x, z_x, mlp_x) = clean[:3], corrupted[:3]
        b, p, d = emb_c.shape
        out = torch.empty(g.n_sources, b, p, d, dtype=model.acc_dtype, device=emb_c.device)
        out[0] = emb_x - emb_c
        for i in range(g.n_layers):
            s = g.head_source(i, 0)
            out[s:s + g.n_heads] = model.head_results(i, z_x[i] - z_c[i])
            out[g.mlp_source(i)] = mlp_x[i] - mlp_c[i]
        return out.view(g.n_sources, -1)

    def grad_pass(self, ids, pos, embeds, metric, clean_logp, labels, deltas, scores, reference=None,
                  this_run: str = "corrupted", rows: torch.Tensor | None = None) -> torch.Tensor:
        """One forward+backward at ``embeds``; adds ``Δa · ∂M/∂(target input)`` to ``scores`` and returns ``Δa``.

        With ``deltas=None``, this pass *is* the ``this_run`` input (corrupted at k = 0 of EAP-IG, clean for EAP):
        its activations and the recorded ``reference`` (the other input) give ``Δa``, so no separate forward is
        needed. ``clean_logp=None`` (EAP's pass on the clean input) takes the clean distribution from this pass.
        With ``rows`` ``[b, S, T]``, each row's contribution goes there (rows never interact) instead of ``scores``."""
        model, g = self.model, self.model.graph
        self.mode, self.embeds, self.store = "grad", embeds, {}
        logits = _logits_at(model, ids, pos)
        if clean_logp is None:
            clean_logp = torch.log_softmax(logits.detach().to(model.acc_dtype), -1)
        total = _metric(logits, metric, clean_logp, *labels).sum()
        st = self.store
        grads = torch.autograd.grad(total, [st[n] for n in self.wanted])
        if deltas is None:
            mine = self._acts(len(ids), detach=True)
            deltas = self.deltas(reference, mine) if this_run == "corrupted" else self.deltas(mine, reference)
        self.embeds = None
        b, p = ids.shape
        n = b * p
        acc = model.acc_dtype
        t_attn = g.n_heads + 2 * g.n_kv_heads
        width = g.per_layer_targets
        for i in range(g.n_layers):
            gq, gk, gv, gm = grads[4 * i:4 * i + 4]
            g_heads = torch.cat([gq.reshape(n, g.n_heads, g.d_head), gk.reshape(n, g.n_kv_heads, g.d_head),
                                 gv.reshape(n, g.n_kv_heads, g.d_head)], 1).to(acc).transpose(0, 1)
            dy = torch.bmm(g_heads, self.w_qkv[i])  # [T_attn, n, d]: γ ⊙ (W^T g) per target
            x1 = st[f"blocks.{i}.ln1.hook_in"].detach().reshape(1, n, -1).to(acc)
            g_attn = _rms_backward_folded(x1, model.ln1[i][1], dy)
            n_attn = g.sources_before(i)
            t0 = i * width
            w2, eps2 = model.ln2[i]
            x2 = st[f"blocks.{i}.ln2.hook_in"].detach().reshape(1, n, -1).to(acc)
            g_mlp = _rms_backward_folded(x2, eps2, (gm.reshape(1, n, -1).to(acc) * w2.to(acc)))
            n_mlp = n_attn + g.n_heads  # the MLP also reads this layer's heads
            out = scores if rows is None else rows
            _add(out, deltas, g_attn.view(t_attn, -1), n_attn, slice(t0, t0 + t_attn))
            _add(out, deltas, g_mlp.view(1, -1), n_mlp, slice(t0 + t_attn, t0 + t_attn + 1))
        _add(scores if rows is None else rows, deltas, grads[-1].to(acc).reshape(1, -1), g.n_sources,
             slice(g.logits_target, g.logits_target + 1))
        self.store = {}
        return deltas


def _add(out: torch.Tensor, deltas: torch.Tensor, grad: torch.Tensor, n_src: int, targets: slice) -> None:
    """``out[:n_src, targets] += Δa · gᵀ`` (``deltas`` ``[S, b·p·d]``, ``grad`` ``[T', b·p·d]``); with a per-row
    ``out`` ``[b, S, T]``, each batch row's own sum (rows are contiguous blocks of the flat axis). ``grad`` moves to
    ``deltas``' device (a model split across GPUs)."""
    grad = grad.to(deltas.device)
    if out.dim() == 2:
        out[:n_src, targets] += deltas[:n_src] @ grad.T
    else:
        b = out.shape[0]
        out[:, :n_src, targets] += torch.einsum("srk,trk->rst", deltas[:n_src].view(n_src, b, -1),
                                                grad.reshape(len(grad), b, -1))


def _rms_backward_folded(x: torch.Tensor, eps: float, gdy: torch.Tensor) -> torch.Tensor:
    """Gradient at the input ``x`` ``[1, n, d]`` of ``y = w ⊙ x · rsqrt(mean(x²) + eps)``, given ``gdy = w ⊙ dy``
    ``[T, n, d]`` (one cotangent per target): ``r·gdy − x·r³·(x·gdy)/d`` with ``r = rsqrt(mean(x²) + eps)``."""
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [1, n, 1]
    coef = (gdy * x).sum(-1, keepdim=True).mul_(r.pow(2) / x.shape[-1])  # [T, n, 1]
    return torch.addcmul(gdy, x, coef, value=-1.0).mul_(r)


def attribute(loaded: LoadedModel | str, pairs: Pairs, *, method: str = "eap-ig", steps: int = 5, metric: str = "kl",
              batch_size: int = 8, show_progress: bool = True, per_example: bool = False) -> Scores:
    """Score every edge of the model's graph on ``pairs`` (see the module docstring for the definitions).

    ``method``: ``"eap-ig"`` (``steps`` interpolation steps, k = 0…m−1), ``"eap"`` (gradient on the clean input) or
    ``"exact"`` (one patched forward per edge: the ground truth, for small graphs). Refuses a batch that would not
    fit in memory, and pairs longer than the model's positions; ``steps`` (checked for every method) and
    ``batch_size`` are integers >= 1. Returns :class:`Scores`.

    ``per_example=True`` (eap, eap-ig) also fills ``Scores.per_example`` ``[N, n_sources, n_targets]``: row i scores
    pair i alone, ``values`` is their mean, and ``pairs.subset(idx)`` scores ``per_example[idx].mean(0)`` (exact up
    to rounding), so bootstraps over pairs need no recompute. Slower than the default (one contraction per row).
    """
    loaded = as_loaded(loaded, "eap.attribute: loaded")
    if method not in METHODS:
        raise EAPError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if per_example and method == "exact":
        raise EAPError("per_example scores are computed for method 'eap' and 'eap-ig', not 'exact'")
    check_int(steps, "steps (eap-ig's interpolation steps)", error=EAPError)
    if method == "exact":

        return exact_scores(loaded, pairs, metric, batch_size, show_progress)
    model = _prepare(loaded, pairs, metric, batch_size, method)
    g = model.graph
    scores = torch.zeros(g.n_sources, g.n_targets, dtype=model.acc_dtype, device=model.device)
    per_row = (torch.zeros(len(pairs), g.n_sources, g.n_targets, dtype=model.acc_dtype, device=model.device)
               if per_example else None)
    alphas = [k / steps for k in range(steps)] if method == "eap-ig" else [1.0]
    batches = list(pairs.batches(batch_size))
    bar = progress(total=len(batches) * len(alphas), desc=f"{method} ({metric})", disable=not show_progress)
    fast = _FastPath(model)
    with _Frozen(model.hf), model.bridge.hooks(fwd_hooks=fast.hooks):
        for first, batch in zip(range(0, len(pairs), batch_size), batches, strict=True):
            ids_c = batch.clean_ids.to(model.device)
            ids_x = batch.corrupted_ids.to(model.device)
            pos = batch.positions.to(model.device)
            labels = (batch.clean_label.to(model.device), batch.corrupted_label.to(model.device))
            if method == "eap-ig":  # record the clean run; the k = 0 pass is the corrupted run
                reference = fast.record(ids_c, pos)
                emb_c, emb_x = reference[0], fast.embed(ids_x)
                clean_logp = torch.log_softmax(reference[3].to(model.acc_dtype), -1)
                this_run = "corrupted"
            else:  # plain EAP: record the corrupted run; the one pass is the clean run
                reference = fast.record(ids_x, pos)
                emb_c, emb_x, clean_logp, this_run = fast.embed(ids_c), reference[0], None, "clean"
            deltas, rows = None, None if per_row is None else per_row[first:first + len(ids_c)]
            for alpha in alphas:
                mixed = emb_x if alpha == 0 else emb_c if alpha == 1 else emb_x + alpha * (emb_c - emb_x)
                embeds = mixed.detach().clone().requires_grad_(True)
                deltas = fast.grad_pass(ids_c, pos, embeds, metric, clean_logp, labels, deltas, scores,
                                        reference, this_run, rows)
                reference = None  # no longer needed once Δa exists
                bar.update(1)
            del deltas, emb_c, emb_x
    bar.close()
    if per_row is not None:
        per_row /= len(alphas)
        scores = per_row.mean(0)
    else:
        scores /= len(alphas) * len(pairs)
    return Scores(scores, g, {"method": method, "steps": len(alphas), "metric": metric, "n_examples": len(pairs),
                              "model": getattr(loaded, "spec", "")}, per_example=per_row)
