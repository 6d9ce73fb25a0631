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

Fast path (:mod:`~toolkit.methods.eap.gradients`): no per-head result tensor is ever built during the gradient
passes, parameters get no gradients, and logits are computed only at the metric positions. Source differences
``Δa_s`` come from the reference input (the clean input for EAP-IG, whose k = 0 step is the corrupted input; the
corrupted input for EAP, whose one pass is the clean input) and the first gradient pass. Per IG step one
forward+backward gives gradients at the q/k/v projection outputs, the MLP input and the final norm's input; the
gradient at each target's pre-norm input follows in closed form (per head ``W_Q[h]ᵀ g`` through the RMSNorm's
backward, ``r·w⊙dy − x·r³·(x·w⊙dy)/d``). Its linear part is summed over the steps at the width of a head (``Σ r·g``)
and contracted with Δa once per batch; only the rank-one part (``Δa·x`` per token) and the MLP input's elementwise
backward are handled per step. The passes run the HF modules the bridge wraps, with HF's SDPA attention except in
float64 (the bridge's wrappers swapped out for the call; the bridge's own hook points when anything hooks it), and
small batches pack the reference and all steps into one pass. Memory holds Δa, the step sums (about one forward's
q/k/v activations) and one layer's target gradients. Supported: RMSNorm decoders with separate q/k/v projections
(Qwen2, Qwen3). HF's RMSNorm and eager softmax compute in float32, so even a float64 model agrees with the float64
reference (:mod:`toolkit.reference.eap`) only to about 1e-7.
See ``docs/methods.md`` ("EAP-IG" section).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from toolkit.core.checks import check_int
from toolkit.core.models import as_loaded
from toolkit.core.progress import progress
from toolkit.methods.eap.evaluate import exact_scores
from toolkit.methods.eap.gradients import _Batch, _FastPath
from toolkit.methods.eap.graph import METHODS, EAPError
from toolkit.methods.eap.model import _Frozen, _metric, _prepare
from toolkit.methods.eap.pairs import Pairs
from toolkit.methods.eap.scores import Scores

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel


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
    with _Frozen(model.hf), fast.session():
        for first, batch in zip(range(0, len(pairs), batch_size), batches, strict=True):
            _run_batch(fast, batch, method, metric, alphas,
                       scores if per_row is None else per_row[first:first + len(batch)], bar)
    bar.close()
    if per_row is not None:
        per_row /= len(alphas)
        scores = per_row.mean(0)
    else:
        scores /= len(alphas) * len(pairs)
    return Scores(scores, g, {"method": method, "steps": len(alphas), "metric": metric, "n_examples": len(pairs),
                              "model": getattr(loaded, "spec", "")}, per_example=per_row)


def _run_batch(fast: _FastPath, batch: Pairs, method: str, metric: str, alphas: list[float], out: torch.Tensor,
               bar) -> None:
    """One batch: the passes of :meth:`_FastPath.plan` (the reference input, recorded without gradient, and the
    gradient inputs, ``len(alphas)`` groups of rows), then the contraction (:meth:`_Batch.finish`) into ``out``."""
    model = fast.model
    acc, dev = model.acc_dtype, model.device
    ids_c, ids_x = batch.clean_ids.to(dev), batch.corrupted_ids.to(dev)
    pos = batch.positions.to(dev)
    labels = (batch.clean_label.to(dev), batch.corrupted_label.to(dev))
    b, p = ids_c.shape
    with torch.no_grad():
        emb = model.hf.get_input_embeddings()
        emb_c, emb_x = emb(ids_c), emb(ids_x)
    # EAP-IG: the reference is the clean run, step k the corrupted embeddings moved k/m of the way to the clean
    # ones (k = 0 is the corrupted run). EAP: the reference is the corrupted run, the one step the clean run.
    ig = method == "eap-ig"
    ref_emb = emb_c if ig else emb_x

    def group(alpha: float) -> torch.Tensor:
        return emb_x if alpha == 0 else emb_c if alpha == 1 else emb_x + alpha * (emb_c - emb_x)

    state = _Batch(fast, b, p, out)
    ref, ref_logits = None, None
    for with_ref, steps in fast.plan(b, p, len(alphas)):
        embeds = torch.cat(([ref_emb] if with_ref else []) + [group(alphas[k]) for k in steps])
        rows = embeds.shape[0] // b
        if not steps:  # the reference alone, without gradient
            with torch.no_grad():
                ref_logits = fast.forward(embeds, pos)
            ref = fast.acts(slice(0, b), ref_emb)
            fast.store = {}
            continue
        logits = fast.forward(embeds.detach().requires_grad_(True), pos.repeat(rows))
        off = b if with_ref else 0
        if with_ref:
            ref, ref_logits = fast.acts(slice(0, b), ref_emb), logits[:b]
        own = ref_logits if ig else logits[off:off + b]  # the clean run's logits (EAP: this pass's clean rows)
        clean_logp = torch.log_softmax(own.detach().to(acc), -1)
        n_steps = len(steps)
        total = _metric(logits[off:], metric, clean_logp.repeat(n_steps, 1),
                        *(t.repeat(n_steps) for t in labels)).sum()
        grads = torch.autograd.grad(total, [fast.store[n] for n in fast.wanted])
        if state.deltas is None:  # the first gradient group is this run (k = 0, or EAP's clean run)
            mine = fast.acts(slice(off, off + b), group(alphas[steps[0]]))
            state.set_deltas(ref, mine) if ig else state.set_deltas(mine, ref)
            ref = None  # no longer needed once Δa exists
        for j in range(n_steps):
            state.add_step(fast.store, grads, slice(off + j * b, off + (j + 1) * b))
            bar.update(1)
        fast.store, grads = {}, None
    state.finish()
