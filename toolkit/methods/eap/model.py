"""The model as EAP reads it, shared by :mod:`~toolkit.methods.eap.attribute` (the gradient methods) and
:mod:`~toolkit.methods.eap.evaluate` (exact scores and faithfulness): weights and hook names read once from the
bridge (:class:`_Model`), the metric at the metric positions (:func:`_metric`), logits at those positions only
(:func:`_logits_at`), the checks every EAP call makes before it runs (:func:`_prepare`: metric, pairs, batch size,
length, vocabulary, memory) and frozen parameters (:class:`_Frozen`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from toolkit.core.checks import check_int
from toolkit.core.models import check_length
from toolkit.methods.eap.graph import METRICS, EAPError, Graph
from toolkit.methods.eap.memory import check_memory
from toolkit.methods.eap.pairs import Pairs

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel


class _Model:
    """Weights and hook names of a Qwen2/Qwen3 TransformerBridge, read once."""

    def __init__(self, loaded: LoadedModel):
        self.hf, self.bridge = loaded.hf, loaded.bridge
        self.graph = Graph.from_bridge(self.bridge)
        g = self.graph
        blocks = self.bridge.blocks
        self.dtype = next(self.hf.parameters()).dtype
        self.device = next(self.hf.parameters()).device
        self.acc_dtype = torch.promote_types(self.dtype, torch.float32)
        dh = g.d_head
        self.w_q, self.w_k, self.w_v, self.w_o, self.ln1, self.ln2 = [], [], [], [], [], []
        for layer in range(g.n_layers):
            attn = blocks[layer].attn
            self.w_q.append(attn.q.original_component.weight.view(g.n_heads, dh, -1))
            self.w_k.append(attn.k.original_component.weight.view(g.n_kv_heads, dh, -1))
            self.w_v.append(attn.v.original_component.weight.view(g.n_kv_heads, dh, -1))
            # o_proj weight [d, H*dh] -> per head [H, dh, d]
            self.w_o.append(attn.o.original_component.weight.view(-1, g.n_heads, dh).permute(1, 2, 0))
            self.ln1.append(self._norm(blocks[layer].ln1, f"blocks.{layer}.ln1"))
            self.ln2.append(self._norm(blocks[layer].ln2, f"blocks.{layer}.ln2"))

    @staticmethod
    def _norm(module, where: str):
        norm = getattr(module, "original_component", module)
        weight, eps = getattr(norm, "weight", None), getattr(norm, "variance_epsilon", None)
        if weight is None or eps is None or "RMSNorm" not in type(norm).__name__:
            raise EAPError(f"{where} is a {type(norm).__name__}; the EAP fast path supports RMSNorm models "
                           "(Qwen2, Qwen3)")
        return weight, float(eps)

    def head_results(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Per-head outputs ``[H, b, p, d]`` from ``z`` ``[b, p, H, dh]``."""
        return torch.einsum("bphe,hed->hbpd", z, self.w_o[layer])


def _metric(logits: torch.Tensor, metric: str, clean_logp: torch.Tensor | None, clean_label: torch.Tensor,
            corrupted_label: torch.Tensor) -> torch.Tensor:
    """Per-row metric ``[b]`` from logits ``[b, V]`` at the metric positions."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    rows = torch.arange(len(logits), device=logits.device)
    if metric == "kl":
        logp = torch.log_softmax(logits, -1)
        ref = clean_logp.to(device=logp.device, dtype=logp.dtype)
        return (ref.exp() * (ref - logp)).sum(-1)
    clean_label, corrupted_label = clean_label.to(logits.device), corrupted_label.to(logits.device)
    if metric == "logit_diff":
        return logits[rows, clean_label] - logits[rows, corrupted_label]
    if metric == "prob_diff":
        p = torch.softmax(logits, -1)
        return p[rows, clean_label] - p[rows, corrupted_label]
    raise EAPError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def _logits_at(model: _Model, ids: torch.Tensor | None, positions: torch.Tensor,
               embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Run the decoder on ``ids`` (or on token embeddings ``embeds`` ``[b, p, d]``) and return the logits ``[b, V]``
    at ``positions`` only."""
    if embeds is None:
        hidden = model.hf.model(input_ids=ids, use_cache=False).last_hidden_state
    else:
        hidden = model.hf.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    picked = hidden[torch.arange(len(hidden), device=hidden.device), positions.to(hidden.device)]  # a split model's
    # last layer may sit on another device than the embeddings
    return model.hf.lm_head(picked[:, None])[:, 0]


def _prepare(loaded: LoadedModel, pairs: Pairs, metric: str, batch_size: int, method: str) -> _Model:
    if metric not in METRICS:
        raise EAPError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if not isinstance(pairs, Pairs):
        raise EAPError(f"pairs must be a toolkit.methods.eap.Pairs (from make_pairs), not {type(pairs).__name__}")
    check_int(batch_size, "batch_size", error=EAPError)
    longest = int(pairs.lengths.argmax())
    check_length(loaded.hf, int(pairs.lengths[longest]), f"pair {longest} (the longest)", error=EAPError)
    model = _Model(loaded)
    vocab = int(loaded.hf.config.vocab_size)
    for name in ("clean_ids", "corrupted_ids", "clean_label", "corrupted_label"):
        bad = getattr(pairs, name)
        if bool((bad < 0).any()) or bool((bad >= vocab).any()):
            raise EAPError(f"Pairs.{name} holds token ids outside the model's vocabulary (0..{vocab - 1}); were the "
                           "pairs made with another tokenizer?")
    check_memory(loaded, min(batch_size, len(pairs)), int(pairs.lengths.max()), method)
    return model


class _Frozen:
    """Parameters frozen (activation gradients only) and eval mode inside; restored on exit."""

    def __init__(self, hf):
        self.hf = hf

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.hf.parameters()]
        self.training = self.hf.training
        for p, _ in self.flags:
            p.requires_grad_(False)
        if self.training:
            self.hf.eval()

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        if self.training:
            self.hf.train(True)
