"""The gradient passes of EAP / EAP-IG (the fast path of :func:`toolkit.methods.eap.attribute`): row groups packed
into forward+backward passes of the bare HF modules (:class:`_FastPath`) and one batch's score accumulation
(:class:`_Batch`).

A target t of layer l reads the residual stream x (the layer norm's input). Its gradient there is the RMSNorm
backward of ``dy_t = w ⊙ W_tᵀ g_t`` (``g_t`` the gradient at the q/k/v projection output, ``W_t`` its weights, w
the norm's weight): ``G_t = r·dy_t − (r³/d)(x·dy_t)·x`` with ``r = rsqrt(mean(x²) + eps)``, and the score is
``Σ_{steps, tokens} Δa_s · G_t``. Δa does not change between IG steps, so the sum over steps is taken on the
target side before the contraction with Δa:

- ``r·dy_t`` is linear in ``r·g_t``: per token only ``A_t = Σ_k r_k g_{t,k}`` (width d_head) is accumulated, and
  ``Σ_tokens Δa_s · (w ⊙ W_tᵀ A_t)`` is contracted **once per batch** (:meth:`_Batch.finish`);
- the rank-one part needs ``x_k · dy_{t,k} = g_{t,k} · W_t(w ⊙ x_k) = g_{t,k} · (proj_{t,k} − b_t) / r_k`` (the
  projection's own output, minus its bias; recomputed from x where the model's dtype is coarser than float32 or its
  norms round, i.e. for every dtype but float32) and ``c_s = x_k · Δa_s``: one small batched product per step gives
  ``c_s`` for every layer and source at once (:meth:`_Batch.add_step`);
- an MLP input and the logits are one target each per layer: their full gradients (an elementwise RMSNorm backward
  for the MLP) are summed over steps and contracted once per batch with the attention targets.

So a step costs its forward+backward plus ``L·S·d`` multiply-adds per token (the x·Δa products) and elementwise
updates, and the ``S × T × tokens × d`` contraction (what every step paid before) is paid once per batch. Δa is
stored ``[S, b, p, d]``: the heads' rows are written by one ``bmm`` per layer, the per-step products are one
``bmm`` over tokens (a strided view), and the final contraction multiplies a block of layers' targets (about
:data:`BLOCK_COLUMNS` columns) at once, a chunk of tokens at a time (chunks sized like one layer's target
gradients).

The passes (:meth:`_FastPath.session`) run the HF modules the bridge wraps, not the bridge's wrappers: the bridge
components are swapped out of the module tree for the call (:func:`_bare_modules`) and plain torch hooks keep the
tensors under the bridge's hook names: same weights, same HF code, none of the wrappers' per-call work (hook
points, the norms' second computation for their hook values, the attention reimplementation), so a pass costs what
the plain HF model costs. The bridge forces HF's eager attention (for its pattern hooks); the passes use HF's
default SDPA instead (5% faster on CPU, fused kernels on GPU; the logits agree with the bridge's to float32
rounding), except for a float64 model, which keeps eager attention: its logits are bit-identical to the bridge's,
so float64 scores (what the reference comparisons use) are the bridge's to about 1e-15. Anything hooking the
bridge, or a model split across devices, falls back to the bridge's own hook points.

Packing (:meth:`_FastPath.plan`): the row groups of a batch (the reference input, recorded without gradient, and
the m interpolated inputs) go through the model together when the whole pass stays under :data:`PACK_MACS`
multiply-adds: a small model on a few short pairs is dominated by per-pass overhead, not by arithmetic. Rows never
interact (causal attention, right padding), so packing changes nothing but rounding. Larger batches run the
reference as its own no-grad forward and one group per pass.
"""

from __future__ import annotations

import contextlib
import math

import torch

from toolkit.methods.eap.memory import _placement
from toolkit.methods.eap.model import _logits_at, _Model

PACK_MACS = 5e8  # a pass packs row groups while its multiply-adds stay below this (overhead-bound below it)
BLOCK_COLUMNS = 64  # the final contraction multiplies about this many target columns (a block of layers) at once
CHUNK_ELEMENTS = 2**20  # ... over at most this many elements of target gradients (small buffers are reused, not
# page-faulted in afresh)


class _FastPath:
    """One set of hooks for a whole :func:`attribute` call; a pass stores the tensors the scores need (the norms'
    inputs, q/k/v projection outputs, the MLP input, z and the MLP output, the final norm's input)."""

    def __init__(self, model: _Model):
        self.model, g = model, model.graph
        acc = model.acc_dtype
        self.store = {}
        blocks = model.bridge.blocks
        # q/k/v weights per head, stacked, with ln1's weight folded in: [H + 2 H_kv, dh, d]
        self.w_qkv = [torch.cat([model.w_q[i], model.w_k[i], model.w_v[i]], 0).to(acc) * model.ln1[i][0].to(acc)
                      for i in range(g.n_layers)]
        self.b_qkv = []  # the projections' biases [H + 2 H_kv, dh] (Qwen2), or None
        for i in range(g.n_layers):
            biases = [getattr(getattr(blocks[i].attn, k).original_component, "bias", None) for k in "qkv"]
            self.b_qkv.append(None if all(b is None for b in biases) else
                              torch.cat([b.reshape(-1, g.d_head) for b in biases]).detach().to(acc))
        self.w2 = [model.ln2[i][0].detach().to(acc) for i in range(g.n_layers)]
        # a float32 model's projection outputs are as precise as the accumulation; float64 models (whose HF norms
        # run in float32) and half-precision ones get W_t(w ⊙ x) recomputed in the accumulation dtype
        self.own_proj = model.dtype == torch.float32
        names = []
        for i in range(g.n_layers):
            names += [f"blocks.{i}.ln1.hook_in", f"blocks.{i}.attn.q.hook_out", f"blocks.{i}.attn.k.hook_out",
                      f"blocks.{i}.attn.v.hook_out", f"blocks.{i}.attn.hook_z", f"blocks.{i}.ln2.hook_in",
                      f"blocks.{i}.mlp.hook_in", f"blocks.{i}.hook_mlp_out"]
        names.append("ln_final.hook_in")
        self.hooks = [(n, self._keep) for n in names]
        self.wanted = [f"blocks.{i}.{h}" for i in range(g.n_layers) for h in ("attn.q.hook_out", "attn.k.hook_out",
                                                                               "attn.v.hook_out", "mlp.hook_in")]
        self.wanted.append("ln_final.hook_in")
        cfg = model.hf.config
        d_mlp = int(getattr(cfg, "intermediate_size", 4 * g.d_model))
        self.layer_macs = g.d_model * g.d_head * (2 * g.n_heads + 2 * g.n_kv_heads) + 3 * g.d_model * d_mlp
        self.head_macs = g.d_model * int(cfg.vocab_size)

    def _keep(self, act, hook):
        self.store[hook.name] = act
        return act  # returned so that this tensor (not a converted copy of it) is what flows on

    @contextlib.contextmanager
    def session(self):
        """The hooks of a whole :func:`attribute` call. When nothing else hooks the bridge and the model sits on one
        device, the passes run the bare HF modules (:func:`_bare_modules`: the bridge's wrappers swapped out for
        the call, HF's SDPA attention but in float64, none of the wrappers' per-call work) with plain torch hooks
        filling the store under the bridge's hook names; otherwise the bridge's own hook points do."""
        model = self.model
        if _placement(model.hf, model.graph.n_layers) is not None or _hooked(model.bridge):
            with model.bridge.hooks(fwd_hooks=self.hooks):
                yield
            return
        handles = []

        def keep_out(name):
            return lambda module, args, out: self.store.__setitem__(name, out)

        def keep_in(name):
            return lambda module, args, kwargs: self.store.__setitem__(name, args[0] if args else
                                                                       next(iter(kwargs.values())))
        outs, ins = [], []  # (HF module, store name), read before the swap (the bridge's blocks are the HF layers)
        for i, block in enumerate(model.bridge.blocks):
            attn, pre = block.attn, f"blocks.{i}."
            outs += [(getattr(attn, k).original_component, f"{pre}attn.{k}.hook_out") for k in "qkv"]
            outs.append((block.mlp.original_component, f"{pre}mlp.hook_out"))
            ins += [(m.original_component, pre + name) for m, name in ((block.ln1, "ln1.hook_in"),
                    (attn.o, "attn.o.hook_in"), (block.ln2, "ln2.hook_in"), (block.mlp, "mlp.hook_in"))]
        ins.append((model.bridge.ln_final.original_component, "ln_final.hook_in"))
        config = model.hf.config
        attention = getattr(config, "_attn_implementation", None)
        sdpa = attention == "eager" and model.dtype != torch.float64  # see the module docstring
        with _bare_modules(model.hf):
            try:
                if sdpa:
                    config._attn_implementation = "sdpa"
                handles += [m.register_forward_hook(keep_out(name)) for m, name in outs]
                handles += [m.register_forward_pre_hook(keep_in(name), with_kwargs=True) for m, name in ins]
                yield
            finally:
                if sdpa:
                    config._attn_implementation = attention
                for handle in handles:
                    handle.remove()

    def plan(self, b: int, p: int, m: int) -> list[tuple[bool, list[int]]]:
        """The passes of one batch: ``(with the reference group, [IG step indices])``. Everything in one pass when
        all ``m + 1`` groups together stay under :data:`PACK_MACS`; else the reference alone (no gradient), then
        as many steps per pass as stay under it (at least one)."""
        g = self.model.graph
        group = b * p * g.n_layers * (self.layer_macs + 2 * p * g.n_heads * g.d_head) + b * self.head_macs
        per_pass = max(1, int(PACK_MACS // max(group, 1)))
        if per_pass >= m + 1:
            return [(True, list(range(m)))]
        return [(True, [])] + [(False, list(range(k, min(k + per_pass, m)))) for k in range(0, m, per_pass)]

    def forward(self, embeds: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One forward from ``embeds`` (the rows' token embeddings); logits at ``pos`` only. Fills the store."""
        self.store = {}
        return _logits_at(self.model, None, pos, embeds=embeds)

    def acts(self, rows: slice, emb: torch.Tensor):
        """``(embeddings, [z per layer], [MLP output per layer])`` of the stored rows ``rows`` (detached)."""
        g, st = self.model.graph, self.store
        b, p = emb.shape[:2]
        z = [st[f"blocks.{i}.attn.o.hook_in"][rows].detach().reshape(b, p, g.n_heads, g.d_head)
             for i in range(g.n_layers)]
        return emb, z, [st[f"blocks.{i}.mlp.hook_out"][rows].detach() for i in range(g.n_layers)]


class _Batch:
    """One batch's Δa and the step sums of its target gradients; :meth:`finish` adds the scores to ``out``
    (``[S, T]``, or ``[b, S, T]`` with one row per pair)."""

    def __init__(self, fast: _FastPath, b: int, p: int, out: torch.Tensor):
        self.fast, self.model, self.g = fast, fast.model, fast.model.graph
        self.b, self.p, self.out = b, p, out
        self.deltas = None
        self.acc_a = [None] * self.g.n_layers  # Σ_k r_k g_k at the q/k/v outputs, [n, T_attn, dh] per layer
        self.acc_m = [None] * (self.g.n_layers + 1)  # Σ_k G_k at the MLP inputs (pre-norm) and the logits, [n, d]

    @torch.no_grad()
    def set_deltas(self, clean, corrupted) -> None:
        """``Δa = a(corrupted) − a(clean)`` for every source, ``[S, b, p, d]`` (accumulation dtype); a head's is
        ``Δz_h W_O[h]``."""
        model, g = self.model, self.g
        (emb_c, z_c, mlp_c), (emb_x, z_x, mlp_x) = clean, corrupted
        b, p, d = emb_c.shape
        out = torch.empty(g.n_sources, b, p, d, dtype=model.acc_dtype, device=emb_c.device)
        out[0] = emb_x - emb_c
        for i in range(g.n_layers):
            s = g.head_source(i, 0)
            dz = (z_x[i] - z_c[i]).to(out.device).reshape(b * p, g.n_heads, g.d_head).transpose(0, 1)
            w_o = model.w_o[i].to(out.device)
            if dz.dtype == out.dtype:
                torch.bmm(dz, w_o, out=out[s:s + g.n_heads].view(g.n_heads, b * p, d))
            else:
                out[s:s + g.n_heads] = torch.bmm(dz, w_o).view(g.n_heads, b, p, d)
            out[g.mlp_source(i)] = mlp_x[i] - mlp_c[i]
        self.deltas = out

    @staticmethod
    def _zeros(accs: list, i: int, shape: tuple, like: torch.Tensor, dtype) -> torch.Tensor:
        if accs[i] is None:
            accs[i] = torch.zeros(shape, dtype=dtype, device=like.device)
        return accs[i]

    @torch.no_grad()
    def add_step(self, store: dict, grads, rows: slice) -> None:
        """Add one IG step (the stored rows ``rows`` of this pass, ``grads`` at :attr:`_FastPath.wanted`)."""
        g, fast, acc = self.g, self.fast, self.model.acc_dtype
        n, d, dh = self.b * self.p, g.d_model, g.d_head
        t_attn, dev = g.n_heads + 2 * g.n_kv_heads, self.deltas.device
        xs, betas = [], []
        for i in range(g.n_layers):
            gq, gk, gv, gm = (t[rows] for t in grads[4 * i:4 * i + 4])
            gh = torch.cat([gq.reshape(n, g.n_heads, dh), gk.reshape(n, g.n_kv_heads, dh),
                            gv.reshape(n, g.n_kv_heads, dh)], 1).to(acc)  # [n, T_attn, dh]
            x1 = store[f"blocks.{i}.ln1.hook_in"][rows].detach().reshape(n, d).to(acc)
            inv = torch.linalg.vecdot(x1, x1).div_(d).add_(self.model.ln1[i][1]).reciprocal_()  # r², [n]
            r = inv.sqrt()
            if fast.own_proj:  # W_t(w ⊙ x) = (projection output − bias) / r, as the forward computed it
                proj = torch.cat([store[f"blocks.{i}.attn.{k}.hook_out"][rows].detach().reshape(n, -1, dh)
                                  for k in "qkv"], 1).to(acc)
                if fast.b_qkv[i] is not None:
                    proj = proj - fast.b_qkv[i].to(proj.device)
                scale = inv / d
            else:  # the forward's projections are coarser than the accumulation dtype: recompute them
                proj = (x1 @ fast.w_qkv[i].to(x1.device).view(-1, d).T).view(n, -1, dh)
                scale = inv * r / d
            self._zeros(self.acc_a, i, (n, t_attn, dh), gh, acc).addcmul_(gh, r[:, None, None])
            betas.append(torch.linalg.vecdot(gh, proj).mul_(scale[:, None]).to(dev))  # (r³/d)(x·dy), [n, T_attn]
            xs.append(x1.to(dev))
            # the MLP input's gradient at the residual: r·gdy − (r³/d)(x·gdy)·x with gdy = w2 ⊙ (its gradient)
            x2 = store[f"blocks.{i}.ln2.hook_in"][rows].detach().reshape(n, d).to(acc)
            gdy = gm.reshape(n, d).to(acc) * fast.w2[i].to(gm.device)
            inv2 = torch.linalg.vecdot(x2, x2).div_(d).add_(self.model.ln2[i][1]).reciprocal_()
            r2 = inv2.sqrt()
            coef = torch.linalg.vecdot(gdy, x2).mul_(inv2).mul_(r2).div_(-d)
            self._zeros(self.acc_m, i, (n, d), gdy, acc).addcmul_(gdy, r2[:, None]).addcmul_(x2, coef[:, None])
        grad_final = grads[-1][rows].reshape(n, d)
        self._zeros(self.acc_m, g.n_layers, (n, d), grad_final, acc).add_(grad_final)  # the logits target
        # x · Δa_s per token for the sources each layer reads: sources in blocks of layers, each block against the
        # layers from its first on (one bmm per block, about half the products of all sources × all layers)
        xs, width, per_row = torch.stack(xs, 1), g.per_layer_targets, self.out.dim() == 3
        deltas = self.deltas.view(g.n_sources, n, d)
        per = max(1, round(math.sqrt(g.n_layers)))
        for l0 in range(0, g.n_layers - 1, per):
            s0, s1 = (0 if l0 == 0 else g.sources_before(l0)), g.sources_before(min(l0 + per, g.n_layers - 1))
            c = torch.bmm(xs[:, l0:], deltas[s0:s1].permute(1, 2, 0))  # [n, L − l0, s1 − s0]
            for i in range(l0, g.n_layers):
                cnt, t0 = min(s1, g.sources_before(i)) - s0, i * width
                if cnt <= 0:
                    continue
                ci = c[:, i - l0, :cnt]
                if per_row:
                    self.out[:, s0:s0 + cnt, t0:t0 + t_attn] -= torch.bmm(
                        ci.reshape(self.b, self.p, cnt).transpose(1, 2), betas[i].view(self.b, self.p, t_attn))
                else:
                    self.out[s0:s0 + cnt, t0:t0 + t_attn] -= ci.T @ betas[i]

    def _chunks(self, columns: int):
        """Token ranges ``(row0, row1, tok0, tok1)`` for the final contraction: whole rows, or pieces of one row
        (contiguous in Δa's flattened tokens), so that a chunk's target gradients take at most one layer's target
        gradients (``3 · (T + 1) · b·p·d``) and :data:`CHUNK_ELEMENTS` elements."""
        g, b, p = self.g, self.b, self.p
        c = max(1, min(3 * g.per_layer_targets * b * p, CHUNK_ELEMENTS // self.g.d_model) // columns)
        if c >= p:
            k = min(b, c // p)
            yield from ((r, min(r + k, b), 0, p) for r in range(0, b, k))
        else:
            yield from ((r, r + 1, t, min(t + c, p)) for r in range(b) for t in range(0, p, c))

    @torch.no_grad()
    def finish(self) -> None:
        """Contract Δa with the step sums: ``Σ_tokens Δa_s · (w ⊙ W_tᵀ A_t)`` for the q/k/v targets and ``Σ Δa_s ·
        G`` for the MLP inputs and the logits, a block of layers (about :data:`BLOCK_COLUMNS` targets) per
        product."""
        g, fast = self.g, self.fast
        b, p, d, n_src = self.b, self.p, self.g.d_model, self.g.n_sources
        t_attn, width = g.n_heads + 2 * g.n_kv_heads, g.per_layer_targets
        per_block = max(1, min(g.n_layers, BLOCK_COLUMNS // width))
        n_blocks = math.ceil(g.n_layers / per_block)
        per_block = math.ceil(g.n_layers / n_blocks)
        blocks = [range(j, min(j + per_block, g.n_layers)) for j in range(0, g.n_layers, per_block)]
        dev, per_row = self.deltas.device, self.out.dim() == 3
        flat, buf = self.deltas.view(n_src, b * p * d), None
        for r0, r1, q0, q1 in self._chunks(per_block * width + 1):
            k, c = r1 - r0, q1 - q0
            n0, n1 = r0 * p + q0, (r1 - 1) * p + q1  # the chunk's tokens, contiguous
            for layers in blocks:
                last = layers[-1] == g.n_layers - 1  # the logits column rides with the last block
                n_cols = len(layers) * width + last
                rows_needed = n_src if last else g.sources_before(layers[-1]) + g.n_heads
                if buf is None:  # the first chunk is the largest; one buffer serves every chunk and block
                    buf = torch.empty((per_block * width + 1) * (n1 - n0) * d, dtype=flat.dtype, device=dev)
                cols = buf[:n_cols * (n1 - n0) * d].view(n_cols, n1 - n0, d)
                for j, i in enumerate(layers):
                    a = self.acc_a[i][n0:n1].transpose(0, 1)  # [T_attn, tokens, dh]
                    w = fast.w_qkv[i].to(a.device)
                    if a.device == dev:
                        torch.bmm(a, w, out=cols[j * width:j * width + t_attn])
                    else:
                        cols[j * width:j * width + t_attn] = torch.bmm(a, w).to(dev)
                    cols[j * width + t_attn] = self.acc_m[i][n0:n1].to(dev)
                if last:
                    cols[-1] = self.acc_m[g.n_layers][n0:n1].to(dev)
                if per_row:
                    prod = torch.bmm(flat[:rows_needed, n0 * d:n1 * d].view(rows_needed, k, c * d).transpose(0, 1),
                                     cols.view(n_cols, k, c * d).permute(1, 2, 0))  # [k, S', cols]
                    out = self.out[r0:r1]
                else:
                    prod = (flat[:rows_needed, n0 * d:n1 * d] @ cols.view(n_cols, -1).T).unsqueeze(0)
                    out = self.out.unsqueeze(0)
                for j, i in enumerate(layers):
                    s_n, t0 = g.sources_before(i), i * width
                    out[:, :s_n, t0:t0 + t_attn] += prod[:, :s_n, j * width:j * width + t_attn]
                    out[:, :s_n + g.n_heads, t0 + t_attn] += prod[:, :s_n + g.n_heads, j * width + t_attn]
                if last:
                    out[:, :, g.logits_target] += prod[:, :, -1]


def _hooked(bridge) -> bool:
    """Whether anything hooks the bridge: a hook point, or a torch hook on one of its components other than the
    capture hooks the bridge's blocks install for themselves (split q/k/v inputs, ``hook_mlp_in``)."""
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    own, keys = set(), []
    for m in bridge.modules():
        if isinstance(m, HookPoint) and (m.fwd_hooks or m.bwd_hooks):
            return True
        if isinstance(m, (HookPoint, GeneralizedComponent)):
            own.update(h.id for h in getattr(m, "_capture_hook_handles", ()))
            for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
                keys += hooks
    return any(key not in own for key in keys)


@contextlib.contextmanager
def _bare_modules(hf):
    """Inside, ``hf``'s module tree holds the HF modules themselves: every bridge component (which the
    TransformerBridge put in place of the module it wraps) is swapped back for its ``original_component``, and put
    back on exit. The weights are the same tensors; the bridge's wrappers (hook points, the norms' extra hook
    values, its attention reimplementation) are skipped, so a pass costs what the plain HF model costs."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    swapped = []

    def walk(module):
        for name, child in list(module._modules.items()):
            if isinstance(child, GeneralizedComponent) and child.original_component is not None:
                module._modules[name] = child.original_component
                swapped.append((module, name, child))
                child = child.original_component
            if child is not None:
                walk(child)
    try:
        walk(hf)
        yield
    finally:
        for module, name, child in reversed(swapped):
            module._modules[name] = child
