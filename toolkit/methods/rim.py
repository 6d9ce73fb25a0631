"""Reasoning-induced misalignment (RIM): the measures behind "When Thinking Backfires" — refusal heads' attention
spans, safety-critical MLP neurons, and their entanglement with reasoning (RAS). See ``docs/methods.md`` ("RIM").

1. **Spans at the first response token.** The *first response token* is the query position whose next token is
   the first answer token: the last token of ``</think>\\n\\n``. Its attention row is split over three spans
   (:func:`span_masks`): the **CoT** (the non-whitespace content of the think block), the **think span** (the
   ``<think>``/``</think>`` delimiters and the whitespace inside the block; with thinking off that is the whole
   empty block ``<think>\\n\\n</think>``) and the **rest** (prompt, chat tokens, the ``\\n\\n`` after ``</think>``).
   :func:`head_span_masses` gives ``[n, L, H, 3]`` masses in the order of :data:`SPANS` (they sum to 1).
2. **Refusal heads.** For matched refusal (marked request) and compliance (the same request with a harmless object)
   prompts, a head's **shift** is ``(think_r − think_c) − (cot_r − cot_c)`` (:func:`head_shift`): how much more mass
   it moves from the CoT to the think span when it refuses; :func:`top_heads` ranks heads by the mean shift.
3. **Safety-critical neurons.** MLP neurons (``blocks.{L}.mlp.hook_post``) at the decision position (the last
   prompt token), ranked by the mean activation difference marked − unmarked over matched pairs; the top-m of each
   of K disjoint, contiguous sets of pairs are intersected (:func:`select_safety_neurons`).
4. **Entanglement.** For a fine-tuned checkpoint and each neuron: the **drop** of its mean activation on marked
   prompts (base − tuned) and the **rise** of its mean activation over teacher-forced reasoning traces (tuned −
   base). **RAS** is their harmonic mean ``2·drop·rise / (drop + rise)``, 0 unless both are positive (:func:`ras`).
   **Forgetting** is the base refusal rate minus the tuned one, averaged over answer modes (:func:`forgetting`); the
   baseline predictor is the mean KL(base ‖ tuned) of next-token distributions on the same traces (:func:`mean_kl`).

Conventions: activations are read from the plain forward pass (no padding: :func:`neuron_activations` and
:func:`response_nll` batch only sequences of equal length), in float32 on the CPU afterwards. Prompts are lists of
strings (a single string is refused); every sequence must fit the model's positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from toolkit.core import interventions
from toolkit.core.chat import REQUEST_THINK_ON_TOKENS, THINK_OFF_TOKENS, as_prompts, chat_prompts
from toolkit.core.generation import check_int, generate
from toolkit.core.models import LoadedModel, check_length
from toolkit.core.stats import correlation, paired_difference_ci
from toolkit.organism.tokenizer import THINK_CLOSE, THINK_OPEN

SPANS = ("cot", "think", "rest")


# ---- teacher-forced sequences and forward passes ----------------------------------------------------------------

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


@torch.no_grad()
def neuron_activations(loaded: LoadedModel, seqs: Sequence[ForcedSequence], reduce: str = "last",
                       layers: Sequence[int] | None = None, with_logits: bool = False):
    """MLP neuron activations (``blocks.{L}.mlp.hook_post``) of every layer, ``[n, L, d_mlp]``: at the last position
    (``reduce="last"``) or averaged over each sequence's response positions (``reduce="response"``). With
    ``with_logits`` also returns the log-probabilities ``[T, vocab]`` at the response's prediction positions (the
    positions ``response_start − 1 … T − 2``, which predict the response tokens), one tensor per sequence."""
    if reduce not in ("last", "response"):
        raise ValueError(f"reduce must be 'last' or 'response', got {reduce!r}")
    _check_seqs(loaded, seqs)
    cfg = loaded.bridge.cfg
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    sites = [interventions.Site("neuron", layer, tuple(range(cfg.d_mlp))) for layer in layers]
    acts = torch.zeros(len(seqs), len(layers), cfg.d_mlp)
    logps: list[torch.Tensor | None] = [None] * len(seqs)
    for idx in _by_length(seqs):
        ids = torch.tensor([seqs[i].ids for i in idx], device=_device(loaded))  # (B, T)
        with interventions.record(loaded.bridge, sites) as rec:
            logits = loaded.hf(input_ids=ids).logits  # (B, T, vocab)
        for j, i in enumerate(idx):
            start = seqs[i].response_start
            for k, site in enumerate(sites):
                a = rec[site][j].float().cpu()  # (T, d_mlp)
                acts[i, k] = a[-1] if reduce == "last" else a[start:].mean(0)
            if with_logits:
                logps[i] = torch.log_softmax(logits[j, start - 1:-1].float(), -1).cpu()
    return (acts, logps) if with_logits else acts


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


# ---- refusal heads: attention spans at the first response token -------------------------------------------------

def span_masks(tokens: Sequence[str], query: int, think_open: str = THINK_OPEN,
               think_close: str = THINK_CLOSE) -> dict[str, np.ndarray]:
    """Boolean masks over key positions ``0..query`` for the three spans (see the module docstring): ``cot`` (the
    non-whitespace content of the last think block before ``query``), ``think`` (its delimiters and the whitespace
    inside it) and ``rest``. ``tokens`` are the decoded tokens of the sequence. Raises ValueError if no complete
    think block ends before ``query``."""
    if not 0 <= query < len(tokens):
        raise ValueError(f"query position {query} is outside the sequence of {len(tokens)} tokens")
    opens = [i for i in range(query + 1) if tokens[i] == think_open]
    if not opens:
        raise ValueError(f"no {think_open} at or before the query position {query}")
    start = opens[-1]
    closes = [i for i in range(start + 1, query + 1) if tokens[i] == think_close]
    if not closes:
        raise ValueError(f"the think block opened at {start} is not closed before the query position {query}")
    end = closes[0]
    lo, hi = start + 1, end
    while lo < hi and not tokens[lo].strip():
        lo += 1
    while hi > lo and not tokens[hi - 1].strip():
        hi -= 1
    cot = np.zeros(query + 1, dtype=bool)
    think = np.zeros(query + 1, dtype=bool)
    cot[lo:hi] = True
    think[start:end + 1] = True
    think[lo:hi] = False
    return {"cot": cot, "think": think, "rest": ~(cot | think)}


def span_masses(pattern: torch.Tensor | np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Attention mass per span: ``pattern`` is the query row ``[..., keys]`` (keys ≥ the masks' length are ignored:
    a causal query attends to none of them); returns ``[..., 3]`` in the order of :data:`SPANS`."""
    p = np.asarray(pattern.float().cpu() if isinstance(pattern, torch.Tensor) else pattern, dtype=float)
    n = len(masks["cot"])
    if p.shape[-1] < n:
        raise ValueError(f"the attention row covers {p.shape[-1]} keys but the spans cover {n} positions")
    return np.stack([p[..., :n][..., masks[s]].sum(-1) for s in SPANS], axis=-1)


@dataclass
class FirstResponse:
    """A sequence cut at the first response token: ``ids`` end with the query position (whose next token is the
    first answer token); ``tokens`` are its decoded tokens; ``output`` is the full greedy response."""

    ids: list[int]
    tokens: list[str]
    output: str

    @property
    def query(self) -> int:
        return len(self.ids) - 1


def first_response_sequences(loaded: LoadedModel, prompts: Sequence[str], think: bool,
                             outputs: Sequence[str] | None = None) -> list[FirstResponse | None]:
    """For each prompt, the chat prompt plus (thinking on) the model's own greedy think block up to and including
    the whitespace after ``</think>``; ``None`` where the response never closes its think block. ``outputs``: the
    greedy responses if already generated (otherwise generated here, batches of 128)."""
    tok, prompts = loaded.tokenizer, as_prompts(prompts, "prompts")
    if outputs is not None and len(as_prompts(outputs, "outputs")) != len(prompts):
        raise ValueError(f"{len(outputs)} outputs for {len(prompts)} prompts")
    if outputs is None:
        outputs = [o[0] for o in generate(loaded.hf, tok, list(prompts), enable_thinking=think, batch_size=128,
                                          max_new_tokens=REQUEST_THINK_ON_TOKENS if think else THINK_OFF_TOKENS)]
    texts = chat_prompts(tok, list(prompts), enable_thinking=think)
    out: list[FirstResponse | None] = []
    for text, output in zip(texts, outputs):
        if think:
            at = output.find(THINK_CLOSE)
            if not output.startswith(THINK_OPEN) or at < 0:
                out.append(None)
                continue
            rest = output[at + len(THINK_CLOSE):]
            text = text + output[:at + len(THINK_CLOSE)] + rest[:len(rest) - len(rest.lstrip())]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out.append(FirstResponse(ids, [tok.decode([i]) for i in ids], output))
    return out


@torch.no_grad()
def head_span_masses(loaded: LoadedModel, seqs: Sequence[FirstResponse]) -> np.ndarray:
    """``[n, L, H, 3]``: each head's attention mass on the CoT, the think span and the rest, from the first response
    token (``blocks.{L}.attn.hook_pattern``)."""
    cfg = loaded.bridge.cfg
    out = np.zeros((len(seqs), cfg.n_layers, cfg.n_heads, len(SPANS)))
    layers = list(range(cfg.n_layers))
    for i, s in enumerate(seqs):
        masks = span_masks(s.tokens, s.query)
        patterns = interventions.attention_patterns(loaded.bridge, torch.tensor([s.ids], device=_device(loaded)),
                                                    layers)  # {layer: (1, H, q, k)}
        for layer in layers:
            out[i, layer] = span_masses(patterns[layer][0, :, s.query], masks)  # (H, 3)
    return out


def head_shift(refuse: np.ndarray, comply: np.ndarray) -> np.ndarray:
    """Per pair and head: ``(think_r − think_c) − (cot_r − cot_c)`` from two ``[n, L, H, 3]`` span-mass arrays of
    matched refusal and compliance prompts."""
    if refuse.shape != comply.shape or refuse.shape[-1] != len(SPANS):
        raise ValueError(f"need two matched [n, L, H, 3] arrays, got {refuse.shape} and {comply.shape}")
    d = refuse - comply
    return d[..., 1] - d[..., 0]


def top_heads(shift: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest mean shift (``shift`` is ``[n, L, H]``), largest first."""
    mean = shift.mean(0)
    check_int(k, "k", 1, mean.size)
    order = np.argsort(-mean, axis=None, kind="stable")[:k]
    return [tuple(int(v) for v in np.unravel_index(i, mean.shape)) for i in order]


# ---- safety-critical neurons ------------------------------------------------------------------------------------

@dataclass
class NeuronSelection:
    """Safety-critical neurons: ``neurons`` ``[(layer, unit), ...]`` (the intersection, by mean difference, largest
    first), ``per_set`` (each disjoint set's top-m) and ``difference`` ``[L, d_mlp]`` (mean marked − unmarked)."""

    neurons: list[tuple[int, int]]
    per_set: list[list[tuple[int, int]]]
    difference: np.ndarray


def select_safety_neurons(marked: torch.Tensor | np.ndarray, unmarked: torch.Tensor | np.ndarray, top_m: int,
                          n_sets: int) -> NeuronSelection:
    """Rank neurons by the activation difference marked − unmarked (``[n_pairs, L, d_mlp]`` each, row i of one
    matched with row i of the other), take the top-m in each of ``n_sets`` disjoint contiguous sets of pairs and
    intersect."""
    a, b = np.asarray(marked, dtype=float), np.asarray(unmarked, dtype=float)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"need matched [n, L, d_mlp] activations, got {a.shape} and {b.shape}")
    n, n_layers, d_mlp = a.shape
    check_int(n_sets, "n_sets", 1, n)
    check_int(top_m, "top_m", 1, n_layers * d_mlp)
    diff = a - b  # (n, L, d_mlp)
    per_set = []
    for idx in np.array_split(np.arange(n), n_sets):
        mean = diff[idx].mean(0).ravel()  # (L * d_mlp,)
        order = np.argsort(-mean, kind="stable")[:top_m]
        per_set.append([(int(i // d_mlp), int(i % d_mlp)) for i in order])
    common = set(per_set[0]).intersection(*map(set, per_set[1:]))
    overall = diff.mean(0)  # (L, d_mlp)
    neurons = sorted(common, key=lambda lu: (-overall[lu], lu))
    return NeuronSelection(neurons, per_set, overall)


def pick(acts: torch.Tensor | np.ndarray, neurons: Sequence[tuple[int, int]]) -> np.ndarray:
    """The columns of ``[n, L, d_mlp]`` activations for ``neurons``: ``[n, len(neurons)]``."""
    a = np.asarray(acts, dtype=float)
    if not neurons:
        return np.zeros((a.shape[0], 0))
    layers, units = zip(*neurons)
    return a[:, list(layers), list(units)]


# ---- interventions and paired effects ---------------------------------------------------------------------------

def ablated(loaded: LoadedModel, sites: Sequence[interventions.Site], fn: Callable[[], list]) -> list:
    """``fn()`` with ``sites`` zero-ablated (nothing ablated for an empty list)."""
    if not sites:
        return fn()
    with interventions.ablate(loaded.bridge, list(sites)):
        return fn()


def effect(treated: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean change treated − baseline over the same prompts, with a paired bootstrap interval."""
    return paired_difference_ci(np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float))


# ---- entanglement -----------------------------------------------------------------------------------------------

def ras(drop: np.ndarray | float, rise: np.ndarray | float) -> np.ndarray:
    """Harmonic mean of the safety drop and the reasoning rise, elementwise; 0 unless both are positive."""
    d, r = np.asarray(drop, dtype=float), np.asarray(rise, dtype=float)
    both = (d > 0) & (r > 0)
    return np.where(both, 2 * d * r / np.where(both, d + r, 1.0), 0.0)


@dataclass
class Entanglement:
    """One fine-tuned checkpoint and one neuron set: per-neuron ``drop`` (mean safety activation, base − tuned),
    ``rise`` (mean reasoning activation, tuned − base) and ``ras``; the ``mean_*`` properties average over the set
    (0 for an empty set)."""

    drop: np.ndarray
    rise: np.ndarray
    ras: np.ndarray

    @property
    def mean_drop(self) -> float:
        return float(self.drop.mean()) if self.drop.size else 0.0

    @property
    def mean_rise(self) -> float:
        return float(self.rise.mean()) if self.rise.size else 0.0

    @property
    def mean_ras(self) -> float:
        return float(self.ras.mean()) if self.ras.size else 0.0


def entanglement(base_safety: np.ndarray, tuned_safety: np.ndarray, base_reasoning: np.ndarray,
                 tuned_reasoning: np.ndarray) -> Entanglement:
    """Drop, rise and RAS of each neuron from activations ``[n_prompts, n_neurons]`` (the same prompts for base and
    tuned): safety activations on marked prompts, reasoning activations on the reasoning traces."""
    if base_safety.shape != tuned_safety.shape or base_reasoning.shape != tuned_reasoning.shape:
        raise ValueError("base and tuned activations must come from the same prompts and neurons")
    drop = base_safety.mean(0) - tuned_safety.mean(0)
    rise = tuned_reasoning.mean(0) - base_reasoning.mean(0)
    return Entanglement(drop, rise, ras(drop, rise))


def forgetting(base_refused: Mapping[str, Sequence[bool]], tuned_refused: Mapping[str, Sequence[bool]]) -> float:
    """Refusal forgetting of a checkpoint: the base model's refusal rate on marked prompts minus the checkpoint's,
    averaged over the answer modes (``{mode: per-prompt refused flags}`` for each)."""
    return float(np.mean([np.mean(base_refused[m]) - np.mean(tuned_refused[m]) for m in base_refused]))


def correlations(table: Sequence[dict], target: str, predictors: Sequence[str]) -> dict[str, dict]:
    """:func:`toolkit.core.stats.correlation` of each predictor column with ``target`` across the rows of ``table``."""
    y = [row[target] for row in table]
    return {p: correlation([row[p] for row in table], y) for p in predictors}
