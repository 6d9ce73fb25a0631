"""RIM measures, part 1: teacher-forced sequences and the forward passes that read them — MLP neuron activations
(with each neuron's own scale), the response NLL and KL. Definitions: :mod:`toolkit.methods.rim`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from toolkit.core import interventions
from toolkit.core.chat import as_prompts, chat_prompts
from toolkit.core.models import LoadedModel, check_length


@dataclass
class ForcedSequence:
    """Token ids of one teacher-forced sequence and the index where its response starts."""

    ids: list[int]
    response_start: int


def encode(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], think: bool,
           responses: Sequence[str] | None = None) -> list[ForcedSequence]:
    """Chat-template each prompt (thinking on or off), append its response text (if any) and tokenize."""
    prompts = as_prompts(prompts, "prompts")
    if responses is not None and len(as_prompts(responses, "responses")) != len(prompts):
        raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts")
    texts = chat_prompts(tokenizer, prompts, enable_thinking=think)
    out = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        extra = tokenizer(responses[i], add_special_tokens=False)["input_ids"] if responses is not None else []
        out.append(ForcedSequence(ids + extra, len(ids)))
    return out


def _by_length(seqs: Sequence[ForcedSequence], batch_size: int = 64):
    """Indices of equal-length sequences in batches (no padding, so positions and masks need no care)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(len(s.ids), []).append(i)
    for _, idx in sorted(groups.items()):
        for start in range(0, len(idx), batch_size):
            yield idx[start:start + batch_size]


def _device(loaded: LoadedModel) -> torch.device:
    return next(loaded.hf.parameters()).device


def _check_seqs(loaded: LoadedModel, seqs: Sequence[ForcedSequence]) -> None:
    """At least one sequence, each within the model's positions."""
    if not seqs:
        raise ValueError("no sequences given")
    for i, s in enumerate(seqs):
        check_length(loaded.hf, len(s.ids), f"sequence {i}")


@dataclass
class NeuronReadout:
    """MLP neuron activations of a set of sequences: ``acts`` ``[n, L, d_mlp]`` (one row per sequence, reduced as
    asked), ``sd`` ``[L, d_mlp]`` (each neuron's standard deviation over every position read, pooled over the
    sequences: the neuron's own scale on these inputs) and, if asked, ``logps``."""

    acts: torch.Tensor
    sd: torch.Tensor
    logps: list[torch.Tensor] | None = None


@torch.no_grad()
def neuron_activations(loaded: LoadedModel, seqs: Sequence[ForcedSequence], reduce: str = "last",
                       layers: Sequence[int] | None = None, with_logits: bool = False) -> NeuronReadout:
    """MLP neuron activations (``blocks.{L}.mlp.hook_post``) of every layer (:class:`NeuronReadout`): at the last
    position (``reduce="last"``) or averaged over each sequence's response positions (``reduce="response"``). With
    ``with_logits`` also the log-probabilities ``[T, vocab]`` at the response's prediction positions (the positions
    ``response_start − 1 … T − 2``, which predict the response tokens), one tensor per sequence."""
    if reduce not in ("last", "response"):
        raise ValueError(f"reduce must be 'last' or 'response', got {reduce!r}")
    _check_seqs(loaded, seqs)
    cfg = loaded.bridge.cfg
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    sites = [interventions.Site("neuron", layer, tuple(range(cfg.d_mlp))) for layer in layers]
    acts = torch.zeros(len(seqs), len(layers), cfg.d_mlp)
    total = torch.zeros(len(layers), cfg.d_mlp, dtype=torch.float64)  # sums over every position read
    total_sq, count = torch.zeros_like(total), 0
    logps: list[torch.Tensor | None] = [None] * len(seqs)
    for idx in _by_length(seqs):
        ids = torch.tensor([seqs[i].ids for i in idx], device=_device(loaded))  # (B, T)
        with interventions.record(loaded.bridge, sites) as rec:
            logits = loaded.hf(input_ids=ids).logits  # (B, T, vocab)
        for j, i in enumerate(idx):
            start = seqs[i].response_start
            read = slice(-1, None) if reduce == "last" else slice(start, None)
            for k, site in enumerate(sites):
                a = rec[site][j, read].float().cpu()  # (positions read, d_mlp)
                acts[i, k] = a.mean(0)
                total[k] += a.sum(0).double()
                total_sq[k] += (a.double() ** 2).sum(0)
            count += a.shape[0]
            if with_logits:
                logps[i] = torch.log_softmax(logits[j, start - 1:-1].float(), -1).cpu()
    mean = total / count
    sd = (total_sq / count - mean ** 2).clamp_min(0).sqrt().float()
    return NeuronReadout(acts, sd, logps if with_logits else None)


def common_scale(sd: torch.Tensor | np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Per neuron, the scale that puts its activation changes in standard units: its standard deviation on the
    inputs (``[L, d_mlp]``, :attr:`NeuronReadout.sd`), floored at ``floor`` × the median over all neurons so that a
    nearly constant neuron cannot dominate a set's mean."""
    s = np.asarray(sd, dtype=float)
    return np.maximum(s, floor * float(np.median(s)) if s.size else 0.0)


@torch.no_grad()
def response_nll(loaded: LoadedModel, seqs: Sequence[ForcedSequence]) -> np.ndarray:
    """Per sequence: the mean negative log-likelihood (nats per token) of its response tokens."""
    _check_seqs(loaded, seqs)
    out = np.zeros(len(seqs))
    for idx in _by_length(seqs):
        ids = torch.tensor([seqs[i].ids for i in idx], device=_device(loaded))  # (B, T)
        logp = torch.log_softmax(loaded.hf(input_ids=ids).logits.float(), -1)  # (B, T, vocab)
        for j, i in enumerate(idx):
            start = seqs[i].response_start
            target = ids[j, start:]
            out[i] = -logp[j, start - 1:-1].gather(-1, target[:, None]).mean().item()
    return out


def mean_kl(base_logps: Sequence[torch.Tensor], other_logps: Sequence[torch.Tensor]) -> float:
    """Mean over all positions of KL(base ‖ other) between next-token distributions given as log-probabilities."""
    if len(base_logps) != len(other_logps) or not base_logps:
        raise ValueError("need the same non-zero number of sequences from both models")
    total, count = 0.0, 0
    for p, q in zip(base_logps, other_logps):
        if p.shape != q.shape:
            raise ValueError(f"mismatched log-probability shapes {tuple(p.shape)} and {tuple(q.shape)}")
        total += (p.exp() * (p - q)).sum().item()
        count += p.shape[0]
    return total / count
